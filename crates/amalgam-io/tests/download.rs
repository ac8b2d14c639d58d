//! Hub downloads against a Hub stand-in on 127.0.0.1 (`common/hub_server.rs`): cache layout,
//! what is requested, offline mode, resume, checksums, gated repositories, revisions.

#[path = "common/hub_server.rs"]
mod hub_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amalgam_io::download::{self, HubOptions, Token};
use amalgam_io::{hub, Error, ModelFolder};
use hub_server::{git_sha1, sha256, HubServer, Repo};

fn golden_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/models")
        .join(name)
}

/// A sharded checkpoint (`ft-b`: index + two shards + tokenizer files) plus files a merge must
/// not fetch.
fn model_files() -> BTreeMap<String, Vec<u8>> {
    let mut f = hub_server::read_dir(&golden_model("ft-b"));
    f.insert("pytorch_model.bin".into(), b"pickle".to_vec());
    f.insert("README.md".into(), b"# card".to_vec());
    f.insert(
        ".gitattributes".into(),
        b"*.safetensors filter=lfs".to_vec(),
    );
    f.insert("onnx/model.onnx".into(), b"onnx".to_vec());
    f.insert("tokenizer.model".into(), b"sentencepiece".to_vec());
    f
}

fn opts(server: &HubServer) -> HubOptions {
    HubOptions {
        endpoint: server.endpoint.clone(),
        retries: 2,
        backoff: Duration::from_millis(5),
        ..HubOptions::default()
    }
}

fn fetched_files(server: &HubServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .filter(|r| r.path.contains("/resolve/"))
        .filter_map(|r| r.path.split_once("/resolve/").map(|(_, f)| f.to_string()))
        .map(|f| f.split_once('/').map(|(_, f)| f.to_string()).unwrap_or(f))
        .collect()
}

#[test]
fn cache_layout_and_allow_list() {
    let repo = Repo::new("org/model", model_files());
    let sha = repo.main();
    let server = HubServer::start(vec![repo]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let seen = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let (s2, t2) = (seen.clone(), total.clone());
    let o = HubOptions {
        progress: Some(Arc::new(move |d, t| {
            s2.store(d, Ordering::Relaxed);
            t2.store(t, Ordering::Relaxed);
        })),
        ..opts(&server)
    };
    let snap = download::download("org/model", None, &cache, &o).unwrap();
    let repo_dir = cache.join("models--org--model");
    assert_eq!(snap, repo_dir.join("snapshots").join(&sha));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        sha
    );

    let files = model_files();
    let mut expected_total = 0;
    for (name, bytes) in &files {
        let link = snap.join(name);
        if !download::wanted(name) {
            assert!(!link.exists(), "{name} must not be downloaded");
            continue;
        }
        expected_total += bytes.len() as u64;
        let etag = if name.ends_with(".safetensors") {
            sha256(bytes)
        } else {
            git_sha1(bytes)
        };
        let target = std::fs::read_link(&link).unwrap();
        assert_eq!(target, Path::new("../../blobs").join(&etag), "{name}");
        assert_eq!(&std::fs::read(&link).unwrap(), bytes, "{name}");
        assert!(repo_dir.join("blobs").join(&etag).is_file());
    }
    for e in std::fs::read_dir(repo_dir.join("blobs")).unwrap() {
        let n = e.unwrap().file_name();
        assert!(!n.to_string_lossy().ends_with(".incomplete"), "{n:?} left");
    }
    assert_eq!(seen.load(Ordering::Relaxed), expected_total);
    assert_eq!(total.load(Ordering::Relaxed), expected_total);

    // Only allow-listed files were asked for, and config.json and the other small files before
    // any weights.
    let asked = fetched_files(&server);
    for f in &asked {
        assert!(download::wanted(f), "{f} was requested");
    }
    let gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && !r.path.starts_with("api/"))
        .map(|r| r.path)
        .collect();
    let first_weight = gets.iter().position(|p| p.starts_with("lfs/")).unwrap();
    assert!(gets[..first_weight]
        .iter()
        .any(|p| p.ends_with("/config.json")));
    assert!(gets[first_weight..].iter().all(|p| p.starts_with("lfs/")));

    let folder = ModelFolder::open(&snap).unwrap();
    assert!(!folder.names().is_empty());

    // A second online call asks only for the revision: every file is already there.
    server.clear_requests();
    assert_eq!(
        download::download("org/model", None, &cache, &o).unwrap(),
        snap
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(reqs[0]
        .path
        .starts_with("api/models/org/model/revision/main"));
}

#[test]
fn offline_uses_only_the_cache() {
    let server = HubServer::start(vec![Repo::new("org/model", model_files())]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let base = tmp.path().join("work");
    let offline = HubOptions {
        offline: true,
        ..opts(&server)
    };
    // Not cached: a clean error naming the model and the variable, and no request at all.
    let e = download::resolve_or_download("org/model", None, &base, &cache, &offline).unwrap_err();
    assert!(matches!(e, Error::HubOffline { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("org/model") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    assert!(server.requests().is_empty());

    let snap =
        download::resolve_or_download("org/model", None, &base, &cache, &opts(&server)).unwrap();
    server.clear_requests();
    let again = download::resolve_or_download("org/model", None, &base, &cache, &offline).unwrap();
    assert_eq!(again, snap);
    assert!(server.requests().is_empty());
    // The plain offline resolver agrees.
    assert_eq!(
        hub::resolve_in("org/model", None, &base, &cache).unwrap(),
        snap
    );

    // Online but the Hub unreachable: the cached revision is used, as the Python client does.
    let dead = HubOptions {
        endpoint: "http://127.0.0.1:9".into(),
        retries: 0,
        ..opts(&server)
    };
    assert_eq!(
        download::resolve_or_download("org/model", None, &base, &cache, &dead).unwrap(),
        snap
    );
    let e = download::resolve_or_download("org/other", None, &base, &cache, &dead).unwrap_err();
    let Error::NotFetched { hub, .. } = &e else {
        panic!("{e}")
    };
    assert!(matches!(**hub, Error::HubNetwork { .. }), "{e}");
    // The message says what the Hub did and where the model was looked for locally.
    let msg = e.to_string();
    assert!(msg.contains("cannot reach the Hub"), "{msg}");
    assert!(
        msg.contains("models--org--other") && msg.contains("work/org/other"),
        "{msg}"
    );
}

#[test]
fn local_folder_is_never_looked_up() {
    let server = HubServer::start(vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    std::fs::create_dir_all(base.join("org/model")).unwrap();
    let p = download::resolve_or_download(
        "org/model",
        None,
        &base,
        &tmp.path().join("hub"),
        &opts(&server),
    )
    .unwrap();
    assert_eq!(p, base.join("org/model"));
    assert!(server.requests().is_empty());
}

#[test]
fn resume_after_dropped_connection() {
    let files = model_files();
    let shard = "model-00001-of-00002.safetensors";
    let server = HubServer::start(vec![Repo::new("org/model", files.clone())]);
    server.drop_once(shard);
    server.drop_once("tokenizer.json");
    let tmp = tempfile::tempdir().unwrap();
    let snap = download::download("org/model", None, tmp.path(), &opts(&server)).unwrap();
    assert_eq!(std::fs::read(snap.join(shard)).unwrap(), files[shard]);
    assert_eq!(
        std::fs::read(snap.join("tokenizer.json")).unwrap(),
        files["tokenizer.json"]
    );
    let lfs = format!("lfs/{}", sha256(&files[shard]));
    let gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == lfs)
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    let half = files[shard].len() / 2;
    assert_eq!(gets[1].range.as_deref(), Some(&*format!("bytes={half}-")));
}

#[test]
fn resume_across_runs() {
    let files = model_files();
    let shard = "model-00002-of-00002.safetensors";
    let server = HubServer::start(vec![Repo::new("org/model", files.clone())]);
    server.drop_once(shard);
    let tmp = tempfile::tempdir().unwrap();
    let no_retry = HubOptions {
        retries: 0,
        ..opts(&server)
    };
    let e = download::download("org/model", None, tmp.path(), &no_retry).unwrap_err();
    assert!(matches!(e, Error::HubNetwork { .. }), "{e}");
    let blobs = tmp.path().join("models--org--model/blobs");
    let part = blobs.join(format!("{}.incomplete", sha256(&files[shard])));
    let half = files[shard].len() / 2;
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64);
    // Interrupted: no ref yet, so an offline run does not take the snapshot for complete.
    assert!(!tmp.path().join("models--org--model/refs/main").exists());

    server.clear_requests();
    let last = Arc::new(std::sync::Mutex::new((0, 0)));
    let l2 = last.clone();
    let no_retry = HubOptions {
        progress: Some(Arc::new(move |d, t| *l2.lock().unwrap() = (d, t))),
        ..no_retry
    };
    let snap = download::download("org/model", None, tmp.path(), &no_retry).unwrap();
    let n = files[shard].len() as u64;
    assert_eq!(
        *last.lock().unwrap(),
        (n, n),
        "the resumed half counts as done"
    );
    assert_eq!(std::fs::read(snap.join(shard)).unwrap(), files[shard]);
    assert!(!part.exists());
    let ranged: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("lfs/"))
        .collect();
    assert_eq!(
        ranged.len(),
        1,
        "only the interrupted shard is fetched: {ranged:?}"
    );
    assert_eq!(ranged[0].range.as_deref(), Some(&*format!("bytes={half}-")));
}

#[test]
fn server_errors_are_retried() {
    let server = HubServer::start(vec![Repo::new("org/model", model_files())]);
    server.fail_once("api/models/org/model");
    server.fail_once("resolve/");
    server.fail_once("lfs/");
    let tmp = tempfile::tempdir().unwrap();
    download::download("org/model", None, tmp.path(), &opts(&server)).unwrap();
}

#[test]
fn checksum_mismatch_is_refused() {
    for file in ["config.json", "model-00001-of-00002.safetensors"] {
        let files = model_files();
        let server = HubServer::start(vec![Repo::new("org/model", files.clone())]);
        server.corrupt(file);
        let tmp = tempfile::tempdir().unwrap();
        let e = download::download("org/model", None, tmp.path(), &opts(&server)).unwrap_err();
        let Error::ChecksumMismatch {
            file: f, expected, ..
        } = &e
        else {
            panic!("{file}: {e}");
        };
        assert_eq!(f, file);
        let etag = if file.ends_with(".safetensors") {
            sha256(&files[file])
        } else {
            git_sha1(&files[file])
        };
        assert_eq!(expected, &etag);
        assert!(e.to_string().contains(file));
        let repo_dir = tmp.path().join("models--org--model");
        let blobs: Vec<_> = std::fs::read_dir(repo_dir.join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!blobs.iter().any(|b| b.starts_with(&etag)), "{blobs:?}");
        assert!(!repo_dir.join("refs/main").exists());
    }
}

#[test]
fn gated_repository() {
    let mut repo = Repo::new("org/gated", model_files());
    repo.token = Some("hf_secret".into());
    let server = HubServer::start(vec![repo]);
    let tmp = tempfile::tempdir().unwrap();

    let e = download::download("org/gated", None, tmp.path(), &opts(&server)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::HubAccess {
                status: 401,
                token_source: None,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("org/gated"), "{msg}");
    assert!(
        msg.contains("huggingface-cli login") && msg.contains("HF_TOKEN"),
        "{msg}"
    );

    let wrong = HubOptions {
        token: Some(Token {
            value: "hf_wrong".into(),
            source: "HF_TOKEN".into(),
        }),
        ..opts(&server)
    };
    let msg = download::download("org/gated", None, tmp.path(), &wrong)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("org/gated") && msg.contains("token from HF_TOKEN"),
        "{msg}"
    );
    assert!(
        !msg.contains("hf_wrong"),
        "the token must not be printed: {msg}"
    );

    server.clear_requests();
    let right = HubOptions {
        token: Some(Token {
            value: "hf_secret".into(),
            source: "HF_TOKEN".into(),
        }),
        ..opts(&server)
    };
    let snap = download::download("org/gated", None, tmp.path(), &right).unwrap();
    assert!(ModelFolder::open(&snap).is_ok());
    for r in server.requests() {
        assert_eq!(r.auth.as_deref(), Some("Bearer hf_secret"), "{r:?}");
    }
    assert!(!format!("{right:?}").contains("hf_secret"));
}

#[test]
fn revisions_branch_tag_commit() {
    let mut repo = Repo::new("org/model", model_files());
    let main = repo.main();
    let mut old = model_files();
    old.insert("config.json".into(), b"{\"old\": true}".to_vec());
    let old_sha = repo.add_commit(old);
    repo.refs.insert("dev".into(), old_sha.clone());
    repo.refs.insert("v1.0".into(), old_sha.clone());
    repo.refs.insert("refs/pr/1".into(), old_sha.clone());
    let server = HubServer::start(vec![repo]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let base = tmp.path().join("work");
    let o = opts(&server);
    let repo_dir = cache.join("models--org--model");

    let m = download::download("org/model", None, &cache, &o).unwrap();
    assert_eq!(m, repo_dir.join("snapshots").join(&main));
    for rev in ["dev", "v1.0", "refs/pr/1"] {
        server.clear_requests();
        let p = download::download("org/model", Some(rev), &cache, &o).unwrap();
        assert_eq!(p, repo_dir.join("snapshots").join(&old_sha), "{rev}");
        assert_eq!(
            std::fs::read_to_string(repo_dir.join("refs").join(rev)).unwrap(),
            old_sha
        );
        assert_eq!(
            std::fs::read(p.join("config.json")).unwrap(),
            b"{\"old\": true}"
        );
        // The revision is one URL segment (`refs%2Fpr%2F1`), files are asked for by commit.
        let reqs = server.requests();
        assert_eq!(reqs[0].path, format!("api/models/org/model/revision/{rev}"));
        assert!(reqs[1..]
            .iter()
            .filter(|r| !r.path.starts_with("lfs/"))
            .all(|r| r.path.contains(&format!("/resolve/{old_sha}/"))));
        assert_eq!(
            hub::resolve_in("org/model", Some(rev), &base, &cache).unwrap(),
            p
        );
    }
    // Blobs shared between the commits were fetched once: the second revision only needed the
    // changed config.json.
    let lfs_gets = server
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("lfs/"))
        .count();
    assert_eq!(lfs_gets, 0);

    // A commit: no ref file is written for it, and it resolves offline by its snapshot.
    let p = download::download("org/model", Some(&old_sha), &cache, &o).unwrap();
    assert_eq!(p, repo_dir.join("snapshots").join(&old_sha));
    assert!(!repo_dir.join("refs").join(&old_sha).exists());
    let offline = HubOptions {
        offline: true,
        ..o.clone()
    };
    assert_eq!(
        download::resolve_or_download("org/model", Some(&old_sha), &base, &cache, &offline)
            .unwrap(),
        p
    );

    let e = download::download("org/model", Some("nope"), &cache, &o).unwrap_err();
    assert!(matches!(e, Error::HubNotFound { .. }), "{e}");
    assert!(e.to_string().contains("nope"));
    assert!(download::download("org/model", Some("../x"), &cache, &o).is_err());
}

#[test]
fn pickle_only_repository() {
    let mut files = BTreeMap::new();
    files.insert("config.json".to_string(), b"{}".to_vec());
    files.insert("pytorch_model.bin".to_string(), b"pickle".to_vec());
    let server = HubServer::start(vec![Repo::new("org/old", files)]);
    let tmp = tempfile::tempdir().unwrap();
    let e = download::download("org/old", None, tmp.path(), &opts(&server)).unwrap_err();
    assert!(matches!(e, Error::PickleOnlyRepo { .. }), "{e}");
    assert!(e.to_string().contains(".bin"));
    assert!(fetched_files(&server).is_empty());
}

#[test]
fn options_from_environment() {
    // The one test that touches the process environment; the variables are unique to it.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("token"), "hf_from_file\n").unwrap();
    std::env::set_var("HF_TOKEN_PATH", tmp.path().join("token"));
    std::env::set_var("HF_ENDPOINT", "http://mirror.example/");
    std::env::set_var("HF_HUB_OFFLINE", "TRUE");
    std::env::remove_var("HF_TOKEN");
    std::env::remove_var("HUGGING_FACE_HUB_TOKEN");
    let o = HubOptions::from_env();
    assert_eq!(o.endpoint, "http://mirror.example");
    assert!(o.offline);
    let t = o.token.unwrap();
    assert_eq!(t.value, "hf_from_file");
    assert!(t.source.ends_with("token"));
    std::env::set_var("HF_TOKEN", "hf_env");
    std::env::set_var("HF_HUB_OFFLINE", "0");
    let o = HubOptions::from_env();
    assert_eq!(o.token.unwrap().value, "hf_env");
    assert!(!o.offline);
}

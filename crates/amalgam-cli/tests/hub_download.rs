//! End to end: a config naming Hub ids merges from an empty cache through a Hub stand-in on
//! 127.0.0.1 and equals the merge of the same local folders; the cache then serves an offline
//! rerun; a gated repository without a token fails naming the repository and the fix.

#[path = "../../amalgam-io/tests/common/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hub_server::{HubServer, Repo};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

/// The three fine-tunes of the golden `linear_weights` case, as Hub repositories, with files a
/// merge must not fetch.
fn server(gated: Option<&str>) -> HubServer {
    let repos = ["ft-a", "ft-b", "ft-c"]
        .iter()
        .map(|m| {
            let mut files = hub_server::read_dir(&golden().join("models").join(m));
            files.insert("pytorch_model.bin".into(), b"pickle".to_vec());
            files.insert("README.md".into(), b"# card".to_vec());
            let id = format!("org/{m}");
            let mut r = Repo::new(&id, files);
            if gated == Some(id.as_str()) {
                r.token = Some("hf_secret".into());
            }
            r
        })
        .collect();
    HubServer::start(repos)
}

/// Runs amalgam with a clean Hugging Face environment under `tmp` (no token from the user's
/// machine, cache in `tmp/cache`).
fn amalgam(cwd: &Path, tmp: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amalgam"));
    c.current_dir(cwd)
        .args(args)
        .env("HF_HOME", tmp.join("hf-home"))
        .env("HF_HUB_CACHE", tmp.join("cache"))
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run amalgam")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "amalgam failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn hub_config(tmp: &Path) -> PathBuf {
    let text = std::fs::read_to_string(golden().join("configs/linear_weights.yml"))
        .unwrap()
        .replace("./models/", "org/");
    assert!(text.contains("org/ft-a"));
    let p = tmp.join("hub.yml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Every file but the model card (which names the models as written) is byte-identical.
fn assert_same_merge(a: &Path, b: &Path) {
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "README.md" && n != "mergekit_config.yml")
            .collect();
        v.sort();
        v
    };
    let (na, nb) = (names(a), names(b));
    assert_eq!(na, nb);
    assert!(na.iter().any(|n| n.ends_with(".safetensors")));
    assert!(na.iter().any(|n| n == "tokenizer.json"));
    for n in na {
        assert!(
            std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap(),
            "{n} differs"
        );
    }
}

#[test]
fn hub_config_merges_like_local_folders_then_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let srv = server(None);
    let cfg = hub_config(t);
    let local_out = t.join("local");
    ok(amalgam(
        &golden(),
        t,
        &[("HF_HUB_OFFLINE", "1")],
        &[
            "merge",
            golden()
                .join("configs/linear_weights.yml")
                .to_str()
                .unwrap(),
            local_out.to_str().unwrap(),
            "--quiet",
        ],
    ));

    let hub_out = t.join("hub");
    ok(amalgam(
        t,
        t,
        &[("HF_ENDPOINT", &srv.endpoint)],
        &[
            "merge",
            cfg.to_str().unwrap(),
            hub_out.to_str().unwrap(),
            "--quiet",
        ],
    ));
    assert_same_merge(&hub_out, &local_out);
    for m in ["ft-a", "ft-b", "ft-c"] {
        assert!(t
            .join(format!("cache/models--org--{m}/refs/main"))
            .is_file());
    }
    let reqs = srv.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        if let Some((_, f)) = r.path.split_once("/resolve/") {
            let file = f.split_once('/').map(|(_, f)| f).unwrap_or(f);
            assert!(
                amalgam_io::download::wanted(file),
                "{file} is outside the allow-list"
            );
        }
    }

    // Offline rerun: the cache serves it, the server hears nothing.
    srv.clear_requests();
    let offline_out = t.join("offline");
    ok(amalgam(
        t,
        t,
        &[("HF_ENDPOINT", &srv.endpoint), ("HF_HUB_OFFLINE", "1")],
        &[
            "merge",
            cfg.to_str().unwrap(),
            offline_out.to_str().unwrap(),
            "--quiet",
        ],
    ));
    assert_same_merge(&offline_out, &local_out);
    assert!(srv.requests().is_empty(), "{:?}", srv.requests());

    // --transformers-cache is mergekit's name for the cache folder: an empty one, offline,
    // finds nothing.
    let out = amalgam(
        t,
        t,
        &[("HF_HUB_OFFLINE", "1")],
        &[
            "merge",
            cfg.to_str().unwrap(),
            t.join("none").to_str().unwrap(),
            "--quiet",
            "--transformers-cache",
            t.join("empty-cache").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty-cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn gated_repository_needs_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let srv = server(Some("org/ft-b"));
    let cfg = hub_config(t);
    let out = amalgam(
        t,
        t,
        &[("HF_ENDPOINT", &srv.endpoint)],
        &[
            "merge",
            cfg.to_str().unwrap(),
            t.join("o").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("org/ft-b"), "{err}");
    assert!(
        err.contains("huggingface-cli login") && err.contains("HF_TOKEN"),
        "{err}"
    );
    assert!(!t.join("o").exists());

    // `amalgam download` with the token from the token file under HF_HOME.
    std::fs::create_dir_all(t.join("hf-home")).unwrap();
    std::fs::write(t.join("hf-home/token"), "hf_secret\n").unwrap();
    let out = ok(amalgam(
        t,
        t,
        &[("HF_ENDPOINT", &srv.endpoint)],
        &["download", "org/ft-b@main", "--quiet"],
    ));
    let printed = String::from_utf8_lossy(&out.stdout);
    let repo = t.join("cache/models--org--ft-b");
    let sha = std::fs::read_to_string(repo.join("refs/main")).unwrap();
    assert!(printed.contains(&sha), "{printed}");
    assert!(repo
        .join("snapshots")
        .join(&sha)
        .join("model.safetensors.index.json")
        .is_file());

    // A config as argument: every Hub model it names.
    ok(amalgam(
        t,
        t,
        &[("HF_ENDPOINT", &srv.endpoint)],
        &["download", cfg.to_str().unwrap(), "--quiet"],
    ));
    for m in ["ft-a", "ft-b", "ft-c"] {
        assert!(t
            .join(format!("cache/models--org--{m}/refs/main"))
            .is_file());
    }
}

//! Hugging Face cache resolution on a cache laid out in a temporary folder.

use std::path::{Path, PathBuf};

use amalgam_io::{hub, Error, ModelFolder};

const SHA_MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
const SHA_TAG: &str = "89abcdef0123456789abcdef0123456789abcdef";
const SHA_OLD: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// `models--org--name` with a branch `main`, a branch `dev` and a tag `v1.0`, snapshots whose
/// files are symlinks into `blobs/`, and a snapshot reachable only by its commit.
fn cache() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("hub/models--org--name");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let mut st = 8u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}      ");
    std::fs::write(repo.join("blobs/aaaa"), &st).unwrap();
    for sha in [SHA_MAIN, SHA_TAG, SHA_OLD] {
        let snap = repo.join("snapshots").join(sha);
        std::fs::create_dir_all(&snap).unwrap();
        std::os::unix::fs::symlink("../../blobs/aaaa", snap.join("model.safetensors")).unwrap();
    }
    std::fs::write(repo.join("refs/main"), SHA_MAIN).unwrap();
    std::fs::write(repo.join("refs/dev"), format!("{SHA_OLD}\n")).unwrap();
    std::fs::write(repo.join("refs/v1.0"), SHA_TAG).unwrap();
    let hub = tmp.path().join("hub");
    (tmp, hub)
}

fn snap(hub: &Path, sha: &str) -> PathBuf {
    hub.join("models--org--name/snapshots").join(sha)
}

#[test]
fn revisions() {
    let (tmp, hub) = cache();
    let base = tmp.path().join("work");
    std::fs::create_dir_all(&base).unwrap();
    let r = |rev| hub::resolve_in("org/name", rev, &base, &hub).unwrap();
    assert_eq!(r(None), snap(&hub, SHA_MAIN));
    assert_eq!(r(Some("main")), snap(&hub, SHA_MAIN));
    assert_eq!(r(Some("dev")), snap(&hub, SHA_OLD));
    assert_eq!(r(Some("v1.0")), snap(&hub, SHA_TAG));
    assert_eq!(r(Some(SHA_OLD)), snap(&hub, SHA_OLD));
    // The snapshot's symlinked blobs open like plain files.
    let f = ModelFolder::open(r(Some("v1.0"))).unwrap();
    assert_eq!(f.files().len(), 1);
}

#[test]
fn local_folder_wins() {
    let (tmp, hub) = cache();
    let base = tmp.path().join("work");
    std::fs::create_dir_all(base.join("org/name")).unwrap();
    assert_eq!(
        hub::resolve_in("org/name", Some("dev"), &base, &hub).unwrap(),
        base.join("org/name")
    );
    let abs = tmp.path().join("abs");
    std::fs::create_dir_all(&abs).unwrap();
    assert_eq!(
        hub::resolve_in(abs.to_str().unwrap(), None, &base, &hub).unwrap(),
        abs
    );
}

#[test]
fn errors_list_every_place() {
    let (tmp, hub) = cache();
    let base = tmp.path().join("work");
    let e = hub::resolve_in("org/name", Some("nope"), &base, &hub).unwrap_err();
    assert!(matches!(e, Error::Unresolved { .. }));
    let msg = e.to_string();
    assert!(msg.contains("org/name@nope"), "{msg}");
    assert!(
        msg.contains(&base.join("org/name").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(
            &hub.join("models--org--name/refs/nope")
                .display()
                .to_string()
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&snap(&hub, "nope").display().to_string()),
        "{msg}"
    );
    // A ref pointing at a missing snapshot says so.
    std::fs::write(hub.join("models--org--name/refs/broken"), "deadbeef").unwrap();
    let msg = hub::resolve_in("org/name", Some("broken"), &base, &hub)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("deadbeef"), "{msg}");
    // Not a repo id: only the local folder is tried.
    let msg = hub::resolve_in("./a/b/c", None, &base, &hub)
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("models--"), "{msg}");
    // A revision may not climb out of the cache.
    assert!(hub::resolve_in("org/name", Some("../../x"), &base, &hub).is_err());
}

#[test]
fn cache_dir_from_environment() {
    // The only test of this binary that touches the environment.
    std::env::set_var("HF_HUB_CACHE", "/c/hub-cache");
    std::env::set_var("HF_HOME", "/c/hf-home");
    assert_eq!(hub::cache_dir(), PathBuf::from("/c/hub-cache"));
    std::env::remove_var("HF_HUB_CACHE");
    assert_eq!(hub::cache_dir(), PathBuf::from("/c/hf-home/hub"));
    std::env::remove_var("HF_HOME");
    std::env::set_var("HOME", "/home/u");
    assert_eq!(
        hub::cache_dir(),
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );
}

/// A ref file whose content is a path (absolute, or climbing out with `..`) is not followed:
/// only a snapshot inside the repository's `snapshots/` folder can be the answer.
#[test]
fn ref_file_cannot_escape_the_snapshots_folder() {
    let (tmp, hub) = cache();
    let base = tmp.path().join("work");
    std::fs::create_dir_all(&base).unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let refs = hub.join("models--org--name/refs");
    std::fs::write(refs.join("abs"), outside.to_string_lossy().as_bytes()).unwrap();
    std::fs::write(refs.join("up"), "../../../outside").unwrap();
    for rev in ["abs", "up"] {
        match hub::resolve_in("org/name", Some(rev), &base, &hub) {
            Err(Error::Unresolved { .. }) => {}
            other => panic!("ref `{rev}` resolved to {other:?}"),
        }
    }
}

//! Hostile model folders, caches and outputs (issue 15): each case ends with a clean error
//! naming the culprit, never a read outside the model folder, a raw control sequence in a
//! message, or a temporary folder left behind.

mod common;

use std::path::{Path, PathBuf};

use amalgam_io::{
    display::safe, hub, DType, Error, IndexStyle, ModelFolder, OutputWriter, PlannedTensor,
    ShardLayout, ShardRule, ShardSpec,
};

fn spec(limit: u64) -> ShardSpec {
    ShardSpec {
        rule: ShardRule::Bytes(limit),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    }
}

fn t(name: &str, n: usize) -> PlannedTensor {
    PlannedTensor {
        name: name.into(),
        dtype: DType::U8,
        shape: vec![n],
    }
}

/// Writes a model of tensors a (U8[2]) and b (U8[3]) in two shards, with a config.json.
fn sharded(dir: &Path) {
    let layout = ShardLayout::plan(vec![t("a", 2), t("b", 3)], &spec(1)).unwrap();
    let w = OutputWriter::create(dir, layout).unwrap();
    w.write_tensor("a", &[1, 2]).unwrap();
    w.write_tensor("b", &[3, 4, 5]).unwrap();
    w.write_file("config.json", b"{}").unwrap();
    w.finish().unwrap();
}

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

fn with_index(dir: &Path, a: &str, b: &str) {
    let index = serde_json::json!({"metadata": {}, "weight_map": {"a": a, "b": b}});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
}

fn open_err(dir: &Path) -> (Error, String) {
    match ModelFolder::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => {
            let s = e.to_string();
            (e, s)
        }
    }
}

/// `weight_map` entries climbing out with `..`, absolute ones, and symlinks leading out are
/// refused with the index file and the entry named; nothing outside is opened.
#[test]
fn index_entries_must_stay_in_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    sharded(&elsewhere);
    let d = tmp.path().join("m");
    sharded(&d);
    let outside = elsewhere.join(SHARD2);
    for (entry, why) in [
        (format!("../elsewhere/{SHARD2}"), "goes up with `..`"),
        (outside.display().to_string(), "is an absolute path"),
    ] {
        with_index(&d, SHARD1, &entry);
        let (e, msg) = open_err(&d);
        assert!(matches!(e, Error::ShardOutsideFolder { .. }), "{msg}");
        assert!(msg.contains("model.safetensors.index.json"), "{msg}");
        assert!(msg.contains(&format!("shard `{entry}`")), "{msg}");
        assert!(msg.contains("tensor `b`"), "{msg}");
        assert!(msg.contains(why), "{msg}");
    }
    // A symlink in the folder that leads out.
    std::os::unix::fs::symlink(&outside, d.join("link.safetensors")).unwrap();
    with_index(&d, SHARD1, "link.safetensors");
    let (e, msg) = open_err(&d);
    assert!(matches!(e, Error::ShardOutsideFolder { .. }), "{msg}");
    assert!(msg.contains("resolves to"), "{msg}");
    // A symlink that stays inside is fine.
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::rename(d.join(SHARD2), d.join("sub").join(SHARD2)).unwrap();
    std::os::unix::fs::symlink(format!("sub/{SHARD2}"), d.join(SHARD2)).unwrap();
    with_index(&d, SHARD1, SHARD2);
    assert_eq!(ModelFolder::open(&d).unwrap().files().len(), 2);
    with_index(&d, SHARD1, &format!("./sub/{SHARD2}"));
    assert_eq!(ModelFolder::open(&d).unwrap().files().len(), 2);
}

/// A shard that is a directory is called a directory, not missing; a dangling symlink says so.
#[test]
fn shard_kinds_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    sharded(&d);
    std::fs::create_dir(d.join("dir.safetensors")).unwrap();
    with_index(&d, SHARD1, "dir.safetensors");
    let (_, msg) = open_err(&d);
    assert!(msg.contains("is a directory, not a file"), "{msg}");
    assert!(!msg.contains("does not exist"), "{msg}");
    std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling.safetensors")).unwrap();
    with_index(&d, SHARD1, "dangling.safetensors");
    let (_, msg) = open_err(&d);
    assert!(msg.contains("does not exist (a dangling symlink)"), "{msg}");
}

/// A Hugging Face cache snapshot: shards, index and tokenizer are symlinks into `../../blobs`
/// of the same repository folder, which must keep working; a tokenizer linking out of the
/// repository folder is refused when copied.
#[test]
fn cache_snapshots_may_link_into_blobs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    sharded(&model);
    std::fs::write(model.join("tokenizer.json"), b"{\"tok\": 1}").unwrap();
    let repo = tmp.path().join("hub/models--org--name");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for (i, f) in [
        SHARD1,
        SHARD2,
        "model.safetensors.index.json",
        "config.json",
        "tokenizer.json",
    ]
    .iter()
    .enumerate()
    {
        std::fs::copy(model.join(f), repo.join(format!("blobs/{i:040}"))).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{i:040}"), snap.join(f)).unwrap();
    }
    let dir = hub::resolve_in("org/name", None, tmp.path(), &tmp.path().join("hub")).unwrap();
    let folder = ModelFolder::open(&dir).unwrap();
    assert_eq!(folder.names(), ["a", "b"]);
    let tok = folder.side_file("tokenizer.json").unwrap().unwrap();
    let out = tmp.path().join("out");
    let layout = ShardLayout::plan(vec![t("a", 2)], &spec(0)).unwrap();
    let w = OutputWriter::create(&out, layout).unwrap();
    w.write_tensor("a", &[1, 2]).unwrap();
    w.copy_file("tokenizer.json", &tok).unwrap();
    // A secret outside the repository folder, linked as a tokenizer file.
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, b"HF_TOKEN=hf_xxx").unwrap();
    std::os::unix::fs::symlink(&secret, snap.join("tokenizer_config.json")).unwrap();
    let link = folder.aux_file("tokenizer_config.json").unwrap();
    let e = w.copy_file("tokenizer_config.json", &link).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::SideFileOutsideFolder { .. }), "{msg}");
    assert!(msg.contains("tokenizer_config.json"), "{msg}");
    assert!(msg.contains("models--org--name"), "{msg}");
    assert!(!msg.contains("hf_xxx"), "{msg}");
    assert!(matches!(
        folder.side_file("tokenizer_config.json"),
        Err(Error::SideFileOutsideFolder { .. })
    ));
    let done = w.finish().unwrap();
    assert_eq!(
        std::fs::read(done.join("tokenizer.json")).unwrap(),
        b"{\"tok\": 1}"
    );
    assert!(!done.join("tokenizer_config.json").exists());
}

/// Outside the cache, the model folder itself is the bound: a tokenizer linking to a file of
/// a sibling folder is refused, one linking inside is copied.
#[test]
fn side_files_must_stay_in_the_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    sharded(&d);
    std::fs::write(tmp.path().join("shadow"), b"root:secret").unwrap();
    std::os::unix::fs::symlink("../shadow", d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("real.model"), b"spm").unwrap();
    std::os::unix::fs::symlink("real.model", d.join("tokenizer.model")).unwrap();
    let folder = ModelFolder::open(&d).unwrap();
    let msg = folder.side_file("tokenizer.json").unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json: a symlink to"), "{msg}");
    assert!(msg.contains("outside the model folder"), "{msg}");
    assert!(folder.side_file("tokenizer.model").unwrap().is_some());
    assert!(folder.side_file("absent.json").unwrap().is_none());
    assert!(folder.side_file("../m/config.json").is_err());
    let out = tmp.path().join("out");
    let w = OutputWriter::create(&out, ShardLayout::plan(vec![], &spec(0)).unwrap()).unwrap();
    let link = folder.aux_file("tokenizer.json").unwrap();
    assert!(matches!(
        w.copy_file("tokenizer.json", &link),
        Err(Error::SideFileOutsideFolder { .. })
    ));
    w.copy_file(
        "tokenizer.model",
        &folder.aux_file("tokenizer.model").unwrap(),
    )
    .unwrap();
    drop(w);
    assert!(!out.exists());
}

fn cache_with_ref(content: Option<&[u8]>, link_to: Option<&Path>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let refs = tmp.path().join("hub/models--org--name/refs");
    std::fs::create_dir_all(&refs).unwrap();
    if let Some(c) = content {
        std::fs::write(refs.join("main"), c).unwrap();
    }
    if let Some(target) = link_to {
        std::os::unix::fs::symlink(target, refs.join("main")).unwrap();
    }
    let hub = tmp.path().join("hub");
    (tmp, hub)
}

fn unresolved(tmp: &Path, hub: &Path) -> String {
    match hub::resolve_in("org/name", None, &tmp.join("work"), hub) {
        Err(e @ Error::Unresolved { .. }) => e.to_string(),
        other => panic!("{other:?}"),
    }
}

/// A ref that is a symlink (to /etc/passwd, say) is not followed, a huge one is not read, and
/// control characters in one never reach the message.
#[test]
fn hostile_refs_are_not_printed() {
    let tmp0 = tempfile::tempdir().unwrap();
    let passwd = tmp0.path().join("passwd");
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    let (tmp, hub) = cache_with_ref(None, Some(&passwd));
    let msg = unresolved(tmp.path(), &hub);
    assert!(msg.contains("is a symlink"), "{msg}");
    assert!(!msg.contains("root:x"), "{msg}");

    let big = vec![b'a'; 50_000_000];
    let (tmp, hub) = cache_with_ref(Some(&big), None);
    let msg = unresolved(tmp.path(), &hub);
    assert!(msg.contains("50000000 bytes"), "{msg}");
    assert!(msg.len() < 2_000, "{} bytes", msg.len());

    let (tmp, hub) = cache_with_ref(Some(b"\x1b[2Jdeadbeef"), None);
    let msg = unresolved(tmp.path(), &hub);
    assert!(!msg.contains('\u{1b}'), "{msg:?}");
    assert!(msg.contains("control characters"), "{msg}");

    let (tmp, hub) = cache_with_ref(Some(b"\xff\xfe"), None);
    let msg = unresolved(tmp.path(), &hub);
    assert!(msg.contains("not text"), "{msg}");
}

/// ESC sequences and newlines in tensor and shard names are escaped in messages.
#[test]
fn untrusted_names_are_escaped_in_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.safetensors");
    let header = "{\"evil\\u001b[31m\\n\":{\"dtype\":\"Q9\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.push(0);
    std::fs::write(&p, &bytes).unwrap();
    let msg = amalgam_io::SafetensorsFile::open(&p)
        .unwrap_err()
        .to_string();
    assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg:?}");
    assert!(msg.contains("evil\\u{1b}[31m\\u{a}"), "{msg}");

    let d = tmp.path().join("m");
    sharded(&d);
    with_index(&d, SHARD1, "\u{1b}]0;pwned\u{7}.safetensors");
    let (_, msg) = open_err(&d);
    assert!(!msg.contains('\u{1b}') && !msg.contains('\u{7}'), "{msg:?}");
    assert!(msg.contains("\\u{1b}]0;pwned\\u{7}"), "{msg}");

    // A huge name is cut.
    let long = "n".repeat(1_000_000);
    with_index(&d, SHARD1, &long);
    let (_, msg) = open_err(&d);
    assert!(msg.len() < 2_000, "{} bytes", msg.len());
    assert!(msg.contains("bytes cut"), "{msg}");
    assert_eq!(safe("plain.name").to_string(), "plain.name");
}

/// Reversed `data_offsets` are a corrupt header, not a truncated file.
#[test]
fn reversed_offsets_are_not_called_truncation() {
    let header = r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[2,0]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let msg = amalgam_io::parse_header(Path::new("x.safetensors"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("reversed"), "{msg}");
    assert!(!msg.contains("truncated"), "{msg}");
}

/// An output path that is a file or a device says what it is.
#[test]
fn existing_outputs_are_described() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let layout = || ShardLayout::plan(vec![t("a", 1)], &spec(0)).unwrap();
    let msg = OutputWriter::create(&file, layout())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("is a file, not a folder"), "{msg}");
    let msg = OutputWriter::create(Path::new("/dev/null"), layout())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a character device"), "{msg}");
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"").unwrap();
    let msg = OutputWriter::create(&full, layout())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a folder that is not empty"), "{msg}");
}

/// Output names of 231-255 bytes: the temporary folder name falls back to a short form.
#[test]
fn long_output_names_work() {
    let tmp = tempfile::tempdir().unwrap();
    for len in [231, 240, 255] {
        let out = tmp.path().join("o".repeat(len));
        let w = OutputWriter::create(&out, ShardLayout::plan(vec![t("a", 1)], &spec(0)).unwrap())
            .unwrap();
        w.write_tensor("a", &[7]).unwrap();
        assert_eq!(w.finish().unwrap(), out);
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            1,
            "only model.safetensors"
        );
    }
}

/// The pid of a process that has exited (so its temporary folders are stale).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Temporary folders left by a killed run of the same output are removed by the next run;
/// those of a live process, of another output, or not named by amalgam are left alone.
#[test]
fn stale_temporary_folders_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path();
    let dead = dead_pid();
    let mk = |name: &str, marker: Option<&str>| {
        let p = parent.join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("model.safetensors"), b"partial").unwrap();
        if let Some(m) = marker {
            std::fs::write(p.join(".amalgam-output-name"), m).unwrap();
        }
        p
    };
    let stale_long = mk(&format!(".out.amalgam-tmp-{dead}-0"), Some("out"));
    let stale_old = mk(&format!(".out.amalgam-tmp-{dead}-3"), None);
    let stale_short = mk(&format!(".amalgam-tmp-{dead}-1"), Some("out"));
    let other_output = mk(&format!(".amalgam-tmp-{dead}-2"), Some("other"));
    let unmarked_short = mk(&format!(".amalgam-tmp-{dead}-4"), None);
    let live = mk(".out.amalgam-tmp-1-0", Some("out"));
    let unrelated = mk(&format!(".out.amalgam-tmp-{dead}-0x"), Some("out"));
    let out = parent.join("out");
    let w =
        OutputWriter::create(&out, ShardLayout::plan(vec![t("a", 1)], &spec(0)).unwrap()).unwrap();
    for p in [&stale_long, &stale_old, &stale_short] {
        assert!(!p.exists(), "{} kept", p.display());
    }
    for p in [&other_output, &unmarked_short, &live, &unrelated] {
        assert!(p.exists(), "{} removed", p.display());
    }
    w.write_tensor("a", &[1]).unwrap();
    w.finish().unwrap();
    // The marker does not reach the output.
    assert!(!out.join(".amalgam-output-name").exists());
}

/// The signal-handler hook removes every unfinished writer's temporary folder. It sets a
/// process-wide flag, so it runs in a child process (this test binary, re-run on one test).
#[test]
fn remove_temp_folders_for_signal_handlers() {
    if let Ok(dir) = std::env::var("AMALGAM_TEST_REMOVE_TEMPS") {
        let out = Path::new(&dir).join("out");
        let w = OutputWriter::create(&out, ShardLayout::plan(vec![t("a", 1)], &spec(0)).unwrap())
            .unwrap();
        let tmp = w.temp_path().to_path_buf();
        assert!(tmp.is_dir());
        let removed = amalgam_io::remove_temp_folders();
        assert_eq!(removed, std::slice::from_ref(&tmp));
        assert!(!tmp.exists());
        // Nothing can be created afterwards, and finish refuses.
        assert!(w.write_file("config.json", b"{}").is_err());
        assert!(!tmp.exists());
        assert!(w.finish().is_err());
        assert!(!out.exists());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "remove_temp_folders_for_signal_handlers"])
        .env("AMALGAM_TEST_REMOVE_TEMPS", tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// More shards than open files allowed: with `ulimit -n 128`, 1,100 shards are written (they
/// used to be all open at once, failing past ~1,020 with the usual limit of 1,024).
#[test]
fn many_shards_with_few_file_descriptors() {
    const N: usize = 1_100;
    if let Ok(dir) = std::env::var("AMALGAM_TEST_MANY_SHARDS") {
        let out = Path::new(&dir).join("out");
        let tensors: Vec<PlannedTensor> = (0..N).map(|i| t(&format!("t{i:05}"), 4)).collect();
        let w = OutputWriter::create(&out, ShardLayout::plan(tensors.clone(), &spec(1)).unwrap())
            .unwrap();
        // Written out of order, so closed shards are reopened.
        for (i, x) in tensors.iter().enumerate().rev() {
            w.write_tensor(&x.name, &(i as u32).to_le_bytes()).unwrap();
        }
        w.finish().unwrap();
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 128 && exec \"$0\" --exact many_shards_with_few_file_descriptors")
        .arg(&exe)
        .env("AMALGAM_TEST_MANY_SHARDS", tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    let out = tmp.path().join("out");
    let folder = ModelFolder::open(&out).unwrap();
    assert_eq!(folder.files().len(), N);
    assert_eq!(folder.require("t00777").unwrap().data, 777u32.to_le_bytes());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// SplitMix64, for a reproducible fuzz loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SNIPPETS: &[&str] = &[
    "\"__metadata__\":{\"format\":\"pt\"},",
    "\"dtype\":\"F16\"",
    "\"dtype\":\"BF16\"",
    "\"shape\":[]",
    "\"shape\":[18446744073709551615,2]",
    "\"data_offsets\":[0,0]",
    "\"data_offsets\":[4,2]",
    "\"data_offsets\":[0,18446744073709551615]",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\u0000",
    "\\ud800",
    "-1",
    "1e400",
    "null",
    "\"x\":{}",
];

/// Seeded mutation fuzzing of the safetensors header parser: every mutated file must be
/// accepted or refused with an error, never a panic. `AMALGAM_FUZZ_SECS` and
/// `AMALGAM_FUZZ_SEED` make longer runs (`bench/fuzz.sh`).
#[test]
fn fuzz_safetensors_header() {
    let secs: u64 = std::env::var("AMALGAM_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("AMALGAM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seeds = [
        r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[1,3],"data_offsets":[8,11]}}"#,
        r#"{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}"#,
        r#"{}"#,
    ];
    let mut rng = Rng(seed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut runs = 0u64;
    while std::time::Instant::now() < deadline {
        let header = seeds[rng.below(seeds.len())];
        let mut h: Vec<u8> = header.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(h.len() + 1);
            match rng.below(4) {
                0 if !h.is_empty() => {
                    let end = (at + 1 + rng.below(6)).min(h.len());
                    h.drain(at.min(end)..end);
                }
                1 if !h.is_empty() => {
                    let i = at.min(h.len() - 1);
                    h[i] = rng.next() as u8;
                }
                _ => {
                    let s = SNIPPETS[rng.below(SNIPPETS.len())];
                    h.splice(at..at, s.bytes());
                }
            }
        }
        let data_len = rng.below(24);
        let declared = match rng.below(10) {
            0 => rng.next(),
            1 => h.len() as u64 + rng.below(40) as u64,
            _ => h.len() as u64,
        };
        let mut file = declared.to_le_bytes().to_vec();
        file.extend_from_slice(&h);
        file.extend((0..data_len).map(|i| i as u8));
        if rng.below(20) == 0 {
            file.truncate(rng.below(file.len() + 1));
        }
        let outcome = std::panic::catch_unwind(|| {
            if let Ok((tensors, _)) = amalgam_io::parse_header(Path::new("fuzz"), &file) {
                // Accepted headers lie inside the file.
                for t in &tensors {
                    assert!(t.start <= t.end && t.end <= file.len(), "{t:?}");
                }
            }
        });
        assert!(
            outcome.is_ok(),
            "panic on header {:?}",
            String::from_utf8_lossy(&file)
        );
        runs += 1;
    }
    assert!(runs > 100, "only {runs} runs");
}

//! An interrupted merge (SIGTERM, SIGINT, SIGHUP) leaves nothing behind: the signal handler
//! removes the temporary folder and the exit status is 128 + the signal number.
#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amalgam_io::{
    IndexStyle, ModelFolder, OutputWriter, PlannedTensor, ShardLayout, ShardRule, ShardSpec,
};

/// Vocabulary of the generated models: embeddings and LM head of 512k x 32 bfloat16 (32 MB
/// each), enough for the merge to take a good fraction of a second on a fast machine.
const VOCAB: usize = 512 * 1024;

/// The golden Llama `base` with its vocabulary grown to [`VOCAB`] (config.json updated to
/// match), every byte `fill`.
fn write_model(dir: &Path, fill: u8) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/models/base");
    let src = ModelFolder::open(&golden).unwrap();
    let mut planned = Vec::new();
    for n in src.names() {
        let t = src.get(n).unwrap();
        let mut shape = t.info.shape.clone();
        if n == "model.embed_tokens.weight" || n == "lm_head.weight" {
            shape[0] = VOCAB;
        }
        planned.push(PlannedTensor {
            name: n.to_string(),
            dtype: t.info.dtype,
            shape,
        });
    }
    let spec = ShardSpec {
        rule: ShardRule::Bytes(0),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    };
    let w = OutputWriter::create(dir, ShardLayout::plan(planned.clone(), &spec).unwrap()).unwrap();
    for p in &planned {
        let len = p.shape.iter().product::<usize>() * p.dtype.size();
        w.write_tensor(&p.name, &vec![fill; len]).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = VOCAB.into();
    w.write_file("config.json", config.to_string().as_bytes())
        .unwrap();
    w.finish().unwrap();
}

fn temp_folders(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("amalgam-tmp"))
        .collect()
}

/// Starts a merge, sends `signal` as soon as its temporary folder exists, and checks the exit
/// status and that neither the temporary folder nor the output is left. Returns false if the
/// merge finished before the signal could be sent (the caller retries with more work).
fn interrupt(dir: &Path, signal: &str, code: i32, threads: &str) -> bool {
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(dir)
        .args([
            "merge",
            "c.yml",
            out.to_str().unwrap(),
            "--quiet",
            "-j",
            threads,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if !temp_folders(dir).is_empty() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "merge failed before the signal: {status}");
            return false;
        }
        assert!(Instant::now() < deadline, "no temporary folder appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        // Finished in the instant between the check and the signal.
        return false;
    }
    assert_eq!(output.status.code(), Some(code), "{signal}: {stderr}");
    assert!(stderr.contains("interrupted by"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        temp_folders(dir),
        Vec::<String>::new(),
        "{signal}: {stderr}"
    );
    assert!(!out.exists(), "{signal}: an output appeared");
    true
}

#[test]
fn interrupted_merges_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // 0x3C3C and 0x4040 are ordinary bfloat16 numbers (about 0.011 and 3.0).
    write_model(&tmp.path().join("a"), 0x3C);
    write_model(&tmp.path().join("b"), 0x40);
    std::fs::write(
        tmp.path().join("c.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./b\n    parameters: {weight: 0.5}\nmerge_method: linear\ndtype: bfloat16\n",
    )
    .unwrap();
    for (signal, code) in [("-TERM", 143), ("-INT", 130), ("-HUP", 129)] {
        // One thread makes the merge slowest; a machine fast enough to finish before the
        // signal lands gets a few more tries.
        let caught = (0..5).any(|_| interrupt(tmp.path(), signal, code, "1"));
        assert!(caught, "{signal}: every merge finished before the signal");
    }
}

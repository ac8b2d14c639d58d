//! `validate` and `merge` decide alike about a config, before any model is read: what
//! `validate` accepts, `merge` takes as far as looking for the models (absent here, and the
//! Hub offline); what `validate` refuses (an error, or a feature not supported yet), `merge`
//! refuses with the same message. Run over the 155 real configs of `tests/corpus/real` and a
//! set of configs using each feature amalgam does not implement yet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn amalgam(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .args(args)
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", dir.join("empty-cache"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Configs using a feature amalgam refuses as not supported yet, one each.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        // A LoRA is applied, but not with a tokenizer merge.
        "lora.yml",
        "merge_method: linear\ntokenizer_source: union\nmodels:\n  - model: a+some/lora\n    parameters: {weight: 1}\n",
    ),
    (
        // Float64 arithmetic of a method without it (linear, task_arithmetic and passthrough
        // have it).
        "float64.yml",
        "merge_method: multislerp\ndtype: float64\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
    ),
];

#[test]
fn validate_and_merge_agree() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/real");
    let tmp = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 155);
    for (name, text) in UNSUPPORTED {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        files.push(p);
    }
    let (mut accepted, mut refused, mut unsupported) = (0, 0, 0);
    let mut disagreements = Vec::new();
    for (i, src) in files.iter().enumerate() {
        // Copied beside nothing: relative model paths point nowhere, Hub ids are not cached.
        let cfg = format!("c{i}.yml");
        std::fs::copy(src, tmp.path().join(&cfg)).unwrap();
        let v = amalgam(tmp.path(), &["validate", &cfg]);
        let stdout = String::from_utf8_lossy(&v.stdout).into_owned();
        // `-I` for the two mergekit-multi files (ignored by single-document ones).
        let m = amalgam(
            tmp.path(),
            &[
                "merge",
                &cfg,
                &format!("out{i}"),
                "-I",
                &format!("inter{i}"),
            ],
        );
        let stderr = String::from_utf8_lossy(&m.stderr).into_owned();
        assert!(
            !m.status.success(),
            "{}: merged without models?",
            src.display()
        );
        assert!(!tmp.path().join(format!("out{i}")).exists());
        if v.status.success() {
            accepted += 1;
            // Refused only because the models are not there.
            if !stderr.contains("cannot find model") && !stderr.contains("does not exist") {
                disagreements.push(format!(
                    "{}: validate ok, merge refused the config:\n{stderr}",
                    src.display()
                ));
            }
        } else {
            let summary = stdout.lines().next().unwrap_or_default();
            if summary.contains(": not supported yet (") {
                unsupported += 1;
            } else {
                refused += 1;
            }
            // The first refusal `validate` prints, word for word.
            let first = stdout
                .lines()
                .filter(|l| l.starts_with("  "))
                .map(str::trim)
                .find(|l| l.contains(": error: "))
                .unwrap_or_else(|| panic!("{}: no error line in\n{stdout}", src.display()));
            if !stderr.contains(first) {
                disagreements.push(format!(
                    "{}: validate says `{first}`; merge says:\n{stderr}",
                    src.display()
                ));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s):\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    eprintln!("accepted {accepted}, not supported yet {unsupported}, invalid {refused}");
    // mergekit runs 130 of the 155 real configs and rejects 25 (tests/corpus/verdicts.tsv), two
    // of which are mergekit-multi configs it runs as such (multi_verdicts.tsv); the configs
    // written above are all unsupported features.
    assert_eq!(refused, 23, "invalid configs");
    assert_eq!(accepted + unsupported, 132 + UNSUPPORTED.len());
    // Every real config mergekit runs is accepted: only the configs written above are refused as
    // not supported yet.
    assert_eq!(unsupported, UNSUPPORTED.len(), "not supported yet");
}

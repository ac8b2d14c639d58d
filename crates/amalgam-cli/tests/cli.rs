//! The command line as a mergekit user meets it: every `mergekit-yaml` 0.1.5 flag is accepted,
//! exit statuses follow mergekit (1 a failed command, 2 bad usage), messages carry one
//! `error:` and no repeated text, nothing but plain text goes to a pipe, and `--overwrite`
//! replaces a model folder only once the new one is complete.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/models")
}

fn amalgam(cwd: &Path, args: &[&str]) -> Output {
    amalgam_env(cwd, args, &[])
}

fn amalgam_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amalgam"));
    c.current_dir(cwd).args(args).env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run amalgam")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

const CONFIG: &str = "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./b\n    parameters: {weight: 0.5}\nmerge_method: linear\ndtype: bfloat16\n";

/// A temp dir holding `a` and `b` (two golden Llamas) and `c.yml`, a linear merge of them.
fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&models().join("base"), &tmp.path().join("a"));
    copy_dir(&models().join("ft-a"), &tmp.path().join("b"));
    std::fs::write(tmp.path().join("c.yml"), CONFIG).unwrap();
    tmp
}

/// Every option of `mergekit-yaml --help` in mergekit 0.1.5 (its `MergeOptions` fields, each
/// boolean as `--x/--no-x`, plus `-v`, `-j` and the `--gpu-rich` flag, which has no `--no-`
/// form), with a value where it takes one.
const MERGEKIT_FLAGS: &[&[&str]] = &[
    &["--allow-crimes"],
    &["--no-allow-crimes"],
    &["--no-unsafe-truncate-embeddings"],
    &["--unsafe-truncate-embeddings"],
    &["--transformers-cache", "hub-cache"],
    &["--lora-merge-cache", "lora-cache"],
    &["--lora-merge-dtype", "bfloat16"],
    &["--cuda"],
    &["--no-cuda"],
    &["--device", "cpu"],
    &["--device", "cuda"],
    &["--low-cpu-memory"],
    &["--no-low-cpu-memory"],
    &["--out-shard-size", "1B"],
    &["--copy-tokenizer"],
    &["--no-copy-tokenizer"],
    &["--clone-tensors"],
    &["--no-clone-tensors"],
    &["--trust-remote-code"],
    &["--no-trust-remote-code"],
    &["--random-seed", "7"],
    &["--lazy-unpickle"],
    &["--no-lazy-unpickle"],
    &["--write-model-card"],
    &["--no-write-model-card"],
    &["--safe-serialization"],
    &["-v"],
    &["-vv"],
    &["--quiet"],
    &["--no-quiet"],
    &["--read-to-gpu"],
    &["--no-read-to-gpu"],
    &["--multi-gpu"],
    &["--no-multi-gpu"],
    &["--num-threads", "2"],
    &["-j", "1"],
    &["--gpu-rich"],
    &["--async-write"],
    &["--no-async-write"],
    &["--write-threads", "2"],
];

/// The two mergekit options amalgam refuses by name: they ask for output it does not produce.
const REFUSED_FLAGS: &[&str] = &["--no-safe-serialization"];

#[test]
fn every_mergekit_flag_is_accepted() {
    let tmp = setup();
    for (i, flag) in MERGEKIT_FLAGS.iter().enumerate() {
        let out = format!("out-{i}");
        let mut args = vec!["merge", "c.yml", out.as_str()];
        args.extend_from_slice(flag);
        let o = amalgam(tmp.path(), &args);
        assert!(o.status.success(), "{flag:?}: {}", stderr(&o));
        assert!(
            tmp.path().join(&out).join("model.safetensors").is_file(),
            "{flag:?}: no model written"
        );
    }
}

#[test]
fn refused_mergekit_flags_say_not_supported() {
    let tmp = setup();
    for flag in REFUSED_FLAGS {
        let o = amalgam(tmp.path(), &["merge", "c.yml", "out", flag]);
        assert_eq!(o.status.code(), Some(1), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not supported yet"),
            "{flag}: {}",
            stderr(&o)
        );
        assert!(!tmp.path().join("out").exists());
    }
}

#[test]
fn gpu_flags_get_one_warning() {
    let tmp = setup();
    let o = amalgam(
        tmp.path(),
        &[
            "merge",
            "c.yml",
            "out",
            "--cuda",
            "--gpu-rich",
            "--lazy-unpickle",
            "--device",
            "cuda",
        ],
    );
    // --lazy-unpickle changes nothing: amalgam reads pickles lazily anyway.
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    for f in ["--cuda", "--gpu-rich", "--device cuda"] {
        assert!(warnings[0].contains(f), "{f} not named: {err}");
    }
    assert!(!warnings[0].contains("--lazy-unpickle"), "{err}");
    // The CPU is what amalgam uses anyway: nothing to warn about.
    let o = amalgam(
        tmp.path(),
        &["merge", "c.yml", "out2", "--device", "cpu", "--no-cuda"],
    );
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn boolean_pairs_last_one_wins() {
    let tmp = setup();
    let o = amalgam(
        tmp.path(),
        &[
            "merge",
            "c.yml",
            "on",
            "--no-copy-tokenizer",
            "--copy-tokenizer",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmp.path().join("on/tokenizer.json").is_file());
    let o = amalgam(
        tmp.path(),
        &[
            "merge",
            "c.yml",
            "off",
            "--copy-tokenizer",
            "--no-copy-tokenizer",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!tmp.path().join("off/tokenizer.json").exists());
    let o = amalgam(
        tmp.path(),
        &[
            "merge",
            "c.yml",
            "card",
            "--no-write-model-card",
            "--write-model-card",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmp.path().join("card/README.md").is_file());
}

/// A Hub cache with `org/name` at `main`, holding a copy of `model`.
fn fake_cache(cache: &Path, id: &str, model: &Path) {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    copy_dir(model, &repo.join("snapshots/0123abcd"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
}

#[test]
fn transformers_cache_is_the_hub_cache() {
    let tmp = setup();
    let cache = tmp.path().join("my-cache");
    fake_cache(&cache, "org/base", &models().join("base"));
    fake_cache(&cache, "org/ft", &models().join("ft-a"));
    std::fs::write(
        tmp.path().join("hub.yml"),
        CONFIG.replace("./a", "org/base").replace("./b", "org/ft"),
    )
    .unwrap();
    // Not found without the flag (an empty default cache), found with either spelling.
    let empty = tmp.path().join("empty-cache");
    // Offline: CI has no network, and the point is the cache flag, not a download.
    let env = [
        ("HF_HUB_CACHE", empty.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let o = amalgam_env(tmp.path(), &["merge", "hub.yml", "x"], &env);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("org/base") && err.contains("hint:"), "{err}");
    assert!(
        err.contains("--transformers-cache"),
        "the fix is named: {err}"
    );
    for flag in ["--transformers-cache", "--hf-cache"] {
        let out = format!("out{flag}");
        let o = amalgam_env(
            tmp.path(),
            &["merge", "hub.yml", &out, flag, "my-cache"],
            &env,
        );
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
    }
}

#[test]
fn exit_status_is_1_for_a_failed_command_and_2_for_bad_usage() {
    let tmp = setup();
    let usage: &[&[&str]] = &[
        &["merge", "c.yml", "out", "--no-such-flag"],
        &["merge", "c.yml"],
        &["merge", "c.yml", "out", "--out-shard-size", "lots"],
        &["merge", "c.yml", "out", "--mergekit-version", "9"],
        &["no-such-command"],
    ];
    for args in usage {
        let o = amalgam(tmp.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    std::fs::write(
        tmp.path().join("bad.yml"),
        "merge_method: nope\nmodels:\n  - model: ./a\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("missing.yml"),
        CONFIG.replace("./b", "./not-here"),
    )
    .unwrap();
    let failed: &[&[&str]] = &[
        &["merge", "no-such-config.yml", "out"],
        &["merge", "bad.yml", "out"],
        &["merge", "missing.yml", "out"],
        &["validate", "bad.yml"],
    ];
    for args in failed {
        let o = amalgam(tmp.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    }
    let o = amalgam(tmp.path(), &["merge", "c.yml", "out"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // An occupied output folder is a failed merge, not a usage error.
    let o = amalgam(tmp.path(), &["merge", "c.yml", "out"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// No line of `text` says `error:` twice, and no `A: A` repeats.
fn clean(text: &str) {
    for line in text.lines() {
        assert!(
            line.matches("error:").count() <= 1,
            "two error: prefixes: {line}"
        );
        let parts: Vec<&str> = line.split(": ").collect();
        for w in parts.windows(2) {
            assert!(w[0] != w[1] || w[0].is_empty(), "repeated text: {line}");
        }
        // A cause repeated at the end of the line it was already part of.
        if let Some((head, last)) = line.rsplit_once(": ") {
            assert!(
                !head.ends_with(last) || last.len() < 8,
                "repeated cause: {line}"
            );
        }
    }
}

#[test]
fn errors_have_one_prefix_and_no_repeated_text() {
    let tmp = setup();
    std::fs::write(
        tmp.path().join("typo.yml"),
        "modles:\n  - model: ./a\nmerge_method: linear\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("missing.yml"),
        CONFIG.replace("./b", "./not-here"),
    )
    .unwrap();
    for (args, must) in [
        (
            &["merge", "no-such.yml", "out"][..],
            "cannot read no-such.yml",
        ),
        (&["merge", "typo.yml", "out"][..], "typo.yml:"),
        (&["merge", "missing.yml", "out"][..], "working directory"),
    ] {
        let o = amalgam(tmp.path(), args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(must), "{args:?}: {err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
        clean(&err);
    }
    // The config error keeps its position, and `merge` gives the same hints as `validate`.
    let merge = stderr(&amalgam(tmp.path(), &["merge", "typo.yml", "out"]));
    let validate = String::from_utf8_lossy(&amalgam(tmp.path(), &["validate", "typo.yml"]).stdout)
        .into_owned();
    for line in validate.lines().skip(1) {
        assert!(
            merge.contains(line.trim()),
            "merge lacks `{}`:\n{merge}",
            line.trim()
        );
    }
}

#[test]
fn no_escape_codes_when_stderr_is_not_a_terminal() {
    let tmp = setup();
    // -vv: every log line the engine has; NO_COLOR unset: only the pipe decides.
    for (i, env) in [vec![], vec![("NO_COLOR", "1")]].into_iter().enumerate() {
        let out = format!("out{i}");
        let o = amalgam_env(tmp.path(), &["merge", "c.yml", &out, "-vv"], &env);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!o.stderr.is_empty(), "-vv logs something");
        assert!(!o.stderr.contains(&0x1b), "escape codes: {}", stderr(&o));
        assert!(
            !o.stderr.contains(&b'\r'),
            "a progress bar was drawn: {}",
            stderr(&o)
        );
    }
    // Without -v, a successful merge on a pipe says where the model is, and nothing else.
    let o = amalgam(tmp.path(), &["merge", "c.yml", "plain"]);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("wrote ") && err.contains("plain"), "{err}");
    let o = amalgam(tmp.path(), &["merge", "c.yml", "quiet", "--quiet"]);
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn overwrite_replaces_a_model_folder_whole() {
    let tmp = setup();
    let out = tmp.path().join("out");
    let o = amalgam(tmp.path(), &["merge", "c.yml", "out"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::read(out.join("model.safetensors")).unwrap();
    // A file of an older model that the new one does not have.
    std::fs::write(out.join("model-00009-of-00009.safetensors"), b"stale").unwrap();

    let o = amalgam(tmp.path(), &["merge", "c.yml", "out"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--overwrite"),
        "the way out is named: {}",
        stderr(&o)
    );

    let o = amalgam(tmp.path(), &["merge", "c.yml", "out", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), first);
    assert!(!out.join("model-00009-of-00009.safetensors").exists());
    assert!(out.join("config.json").is_file());
    // The card is titled with the folder's name, not the staging folder's.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("# out\n"), "{card}");
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );

    // Into a missing or empty folder, --overwrite is a plain merge.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    for dir in ["empty", "new"] {
        let o = amalgam(tmp.path(), &["merge", "c.yml", dir, "--overwrite"]);
        assert!(o.status.success(), "{dir}: {}", stderr(&o));
    }
}

#[test]
fn overwrite_keeps_the_old_model_when_the_merge_fails() {
    let tmp = setup();
    let o = amalgam(tmp.path(), &["merge", "c.yml", "out"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(tmp.path().join("out/model.safetensors")).unwrap();
    // A model that is not there: the merge fails at planning, after --overwrite was given.
    std::fs::write(
        tmp.path().join("broken.yml"),
        CONFIG.replace("./b", "./not-here"),
    )
    .unwrap();
    let o = amalgam(tmp.path(), &["merge", "broken.yml", "out", "--overwrite"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        std::fs::read(tmp.path().join("out/model.safetensors")).unwrap(),
        before
    );
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn overwrite_refuses_what_is_not_a_model_folder() {
    let tmp = setup();
    // The working directory itself, a folder with a subfolder, a file.
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("config.json"), "{}").unwrap();
    std::fs::write(tmp.path().join("notes"), "keep me").unwrap();
    let notes = tmp.path().join("docs");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("thesis.tex"), "keep me").unwrap();
    for dir in ["project", "notes", "docs", "."] {
        let o = amalgam(tmp.path(), &["merge", "c.yml", dir, "--overwrite"]);
        assert_eq!(o.status.code(), Some(1), "{dir}: {}", stderr(&o));
    }
    assert!(project.join("src").is_dir());
    assert!(notes.join("thesis.tex").is_file());
    assert!(tmp.path().join("a/model.safetensors").is_file());
}

#[test]
fn verify_counts_add_up() {
    let tmp = setup();
    let o = amalgam(tmp.path(), &["merge", "c.yml", "out"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = amalgam(tmp.path(), &["verify", "c.yml", "out"]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", stderr(&o));
    assert!(stdout.starts_with("OK: 39 tensors recomputed"), "{stdout}");
    assert!(stdout.contains("all identical"), "{stdout}");

    // One element of the last tensor in the file changed.
    let f = tmp.path().join("out/model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&f, bytes).unwrap();
    let o = amalgam(tmp.path(), &["verify", "c.yml", "out"]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{stdout}{}", stderr(&o));
    let diffs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("DIFF ")).collect();
    assert_eq!(diffs.len(), 1, "{stdout}");
    assert!(diffs[0].contains("1 of "), "{stdout}");
    assert!(
        stdout.contains("MISMATCH: 39 tensors recomputed") && stdout.contains(", 1 differ"),
        "{stdout}"
    );
    // Nothing but the report on stdout, nothing drawn on a pipe.
    assert!(!o.stdout.contains(&0x1b) && !o.stderr.contains(&0x1b));
}

#[test]
fn validate_names_an_unreadable_file_once() {
    let tmp = setup();
    let o = amalgam(tmp.path(), &["validate", "c.yml", "gone.yml"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = out
        .lines()
        .find(|l| l.contains("gone.yml"))
        .expect("a line for gone.yml");
    assert_eq!(line.matches("gone.yml").count(), 1, "{line}");
    clean(&out);
}

#[test]
fn readme_says_what_every_mergekit_flag_does() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    for flag in MERGEKIT_FLAGS
        .iter()
        .map(|f| f[0])
        .chain(REFUSED_FLAGS.iter().copied())
    {
        // `--no-x` is covered by `--x` ("and every `--no-` form"), `-vv` by `-v`.
        let name = match flag.strip_prefix("--no-") {
            Some(rest) if !REFUSED_FLAGS.contains(&flag) => format!("--{rest}"),
            _ if flag == "-vv" => "-v".to_string(),
            _ => flag.to_string(),
        };
        assert!(
            readme.contains(&format!("`{name}")),
            "README.md does not mention {name}"
        );
    }
}

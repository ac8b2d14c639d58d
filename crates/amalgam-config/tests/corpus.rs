//! amalgam accepts exactly the real-world configs mergekit 0.1.5 accepts
//! (`tests/corpus/verdicts.tsv`, made by `tests/corpus/make_verdicts.py`), and every rejection
//! points at the problem.

mod common;

use amalgam_config::{parse_str, validate, ConfigError, Diagnostic, Severity};

/// amalgam's verdict: the errors of parsing plus method-aware validation (not strict).
fn amalgam_errors(text: &str) -> Vec<Diagnostic> {
    let methods = common::mergekit_methods();
    match parse_str(text) {
        Ok(loaded) => validate(&loaded, &methods, false, amalgam_schema::Compat::V0_1_5)
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
        Err(ConfigError::Invalid { diagnostics, .. }) => diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn verdicts_match_mergekit() {
    let dir = common::repo_tests().join("corpus");
    let table = std::fs::read_to_string(dir.join("verdicts.tsv")).unwrap();
    let mut mismatches = Vec::new();
    let mut counts = (0, 0);
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, final_verdict, mk_error) =
            (cols[0], cols[2], cols.get(3).copied().unwrap_or(""));
        let text = std::fs::read_to_string(dir.join("real").join(file)).unwrap();
        let errors = amalgam_errors(&text);
        let accepted = errors.is_empty();
        if accepted {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
        let expected = final_verdict == "accept";
        if accepted != expected {
            mismatches.push(format!(
                "{file}: mergekit {final_verdict} ({mk_error}); amalgam {}",
                if accepted {
                    "accepts".to_string()
                } else {
                    errors
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(" / ")
                }
            ));
        }
        for d in &errors {
            eprintln!("{file}: {d}");
            assert!(
                d.location.is_some() || !d.path.is_empty(),
                "{file}: error without position or path: {d}"
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(counts, (130, 25), "accepted/rejected");
}

#[test]
fn verdict_table_covers_the_corpus() {
    let dir = common::repo_tests().join("corpus");
    let table = std::fs::read_to_string(dir.join("verdicts.tsv")).unwrap();
    let listed = table.lines().skip(1).count();
    let files = std::fs::read_dir(dir.join("real"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yml")
        })
        .count();
    assert_eq!(listed, files);
    assert_eq!(files, 155);
    // mergekit's own loader (YAML + schema + method lookup) accepts 142 of them.
    let load_accepts = table
        .lines()
        .skip(1)
        .filter(|l| l.split('\t').nth(1) == Some("accept"))
        .count();
    assert_eq!(load_accepts, 142);
}

/// Prints every finding on the corpus (run with `--nocapture` to review the texts).
#[test]
fn findings_on_the_corpus_have_positions() {
    let dir = common::repo_tests().join("corpus/real");
    let methods = common::mergekit_methods();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    names.sort();
    for p in names {
        let text = std::fs::read_to_string(&p).unwrap();
        let diags = match parse_str(&text) {
            Ok(l) => validate(&l, &methods, false, amalgam_schema::Compat::V0_1_5),
            Err(ConfigError::Invalid { diagnostics, .. }) => diagnostics,
            Err(e) => panic!("{e}"),
        };
        for d in diags {
            eprintln!("{}", d.render(Some(p.strip_prefix(&dir).unwrap())));
            assert!(d.location.is_some(), "{d}");
        }
    }
}

//! Multi-document configs, as `mergekit-multi` reads them: `---`-separated merge configs, each
//! with an optional `name:`; a model reference equal to another document's name means that
//! merge's output (in the intermediate folder). At most one document is unnamed: the final
//! merge.
//!
//! Documents are split at the YAML document markers (`---` / `...` at the start of a line, which
//! YAML forbids anywhere else at column 0), and each is parsed by the ordinary single-document
//! reader with the other documents' lines blanked, so every diagnostic keeps the file's own line
//! numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::{
    ConfigError, Diagnostic, LoadedConfig, MergeConfig, ModelRef, Severity, TokenEmbeddingSource,
    TokenizerSource,
};

/// One document of a multi-document config.
#[derive(Debug, Clone)]
pub struct NamedConfig {
    /// Its `name:` (`None` for the final, unnamed merge).
    pub name: Option<String>,
    /// The parsed document (its `text` is the document's own lines).
    pub loaded: LoadedConfig,
    /// Names of the other documents whose outputs it reads.
    pub needs: BTreeSet<String>,
}

/// Whether `text` holds more than one YAML document with content.
pub fn is_multi_document(text: &str) -> bool {
    documents(text).len() > 1
}

/// The documents of `text`: (first line, last line) ranges (1-based, inclusive) holding content.
fn documents(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let marker = |l: &str| {
        ["---", "..."].iter().any(|m| {
            l.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '#']))
        })
    };
    let content = |l: &str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
    };
    let mut out = Vec::new();
    let mut start = 1;
    for (i, l) in lines.iter().enumerate() {
        if marker(l) {
            if lines[start - 1..i].iter().any(|l| content(l)) {
                out.push((start, i));
            }
            start = i + 2;
        }
    }
    if start <= lines.len() && lines[start - 1..].iter().any(|l| content(l)) {
        out.push((start, lines.len()));
    }
    out
}

/// Reads a multi-document config file (see [`parse_documents`]).
pub fn load_documents(path: &Path) -> Result<Vec<NamedConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_documents(&text).map_err(|e| match e {
        ConfigError::Invalid { diagnostics, .. } => ConfigError::Invalid {
            file: Some(path.to_path_buf()),
            diagnostics,
        },
        e => e,
    })
}

fn invalid(line: usize, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        path: String::new(),
        location: Some(crate::Location { line, column: 1 }),
        message,
    }
}

/// The documents of a mergekit-multi config, each parsed and validated by the schema, with their
/// names and dependencies checked as mergekit-multi checks them: unique names, at most one
/// unnamed document, and no cycle.
pub fn parse_documents(text: &str) -> Result<Vec<NamedConfig>, ConfigError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut docs = Vec::new();
    let mut diagnostics = Vec::new();
    for (first, last) in documents(text) {
        // The document's `name:` (a top-level key, the only one mergekit-multi adds): read and
        // blanked, so the schema does not call it unknown.
        let mut name = None;
        let mut own = String::new();
        let mut blanked = String::new();
        for (i, l) in lines.iter().enumerate() {
            let n = i + 1;
            let inside = (first..=last).contains(&n);
            let value = l
                .strip_prefix("name:")
                .filter(|_| inside)
                .map(|v| v.split(" #").next().unwrap_or(v).trim())
                .map(|v| v.trim_matches(|c| c == '"' || c == '\''));
            match value {
                Some(v) if !v.is_empty() => name = Some(v.to_string()),
                _ if inside => blanked.push_str(l),
                _ => {}
            }
            blanked.push('\n');
            if inside {
                own.push_str(l);
                own.push('\n');
            }
        }
        match crate::parse_str(&blanked) {
            Ok(mut loaded) => {
                loaded.text = own;
                docs.push((name, loaded, first));
            }
            Err(ConfigError::Invalid { diagnostics: d, .. }) => diagnostics.extend(d),
            Err(e) => return Err(e),
        }
    }
    let mut seen: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for (name, _, line) in &docs {
        if let Some(prev) = seen.insert(name.clone(), *line) {
            diagnostics.push(invalid(
                *line,
                match name {
                    Some(n) => format!(
                        "a second document is named `{n}` (the first starts at line {prev}); \
                         mergekit-multi stops with \"Duplicate merge name {n}\""
                    ),
                    None => format!(
                        "a second document has no `name:` (the first starts at line {prev}); \
                         only the final merge may be unnamed (mergekit-multi: \"Multiple \
                         unnamed merge configurations are not supported\")"
                    ),
                },
            ));
        }
    }
    if !diagnostics.is_empty() {
        return Err(ConfigError::Invalid {
            file: None,
            diagnostics,
        });
    }
    let names: BTreeSet<String> = docs.iter().filter_map(|(n, _, _)| n.clone()).collect();
    let out: Vec<NamedConfig> = docs
        .into_iter()
        .map(|(name, loaded, _)| {
            let needs = referenced_models(&loaded.config)
                .into_iter()
                .filter(|r| names.contains(&r.path))
                .map(|r| r.path)
                .collect();
            NamedConfig {
                name,
                loaded,
                needs,
            }
        })
        .collect();
    order(&out)?;
    Ok(out)
}

/// The documents in the order to run them: each after the merges it reads, otherwise in file
/// order (mergekit-multi's executor orders its task graph; any order that respects the
/// dependencies gives the same models). A cycle is an error naming it.
pub fn order(docs: &[NamedConfig]) -> Result<Vec<usize>, ConfigError> {
    let index: BTreeMap<&str, usize> = docs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.name.as_deref().map(|n| (n, i)))
        .collect();
    let mut done = vec![false; docs.len()];
    let mut out = Vec::new();
    while out.len() < docs.len() {
        let next = (0..docs.len()).find(|&i| {
            !done[i]
                && docs[i]
                    .needs
                    .iter()
                    .all(|n| index.get(n.as_str()).is_none_or(|&j| done[j]))
        });
        let Some(i) = next else {
            let stuck: Vec<String> = (0..docs.len())
                .filter(|&i| !done[i])
                .map(|i| {
                    docs[i]
                        .name
                        .clone()
                        .unwrap_or_else(|| "(final merge)".into())
                })
                .collect();
            return Err(ConfigError::Invalid {
                file: None,
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    path: String::new(),
                    location: None,
                    message: format!(
                        "these merges read each other's outputs in a cycle: {} (mergekit-multi: \
                         \"Circular dependency detected\")",
                        stuck.join(", ")
                    ),
                }],
            });
        };
        done[i] = true;
        out.push(i);
    }
    Ok(out)
}

/// Every model reference of a config, including tokenizer sources.
fn referenced_models(c: &MergeConfig) -> Vec<ModelRef> {
    let mut out = c.referenced_models();
    let mut add = |m: &ModelRef| {
        if !out.contains(m) {
            out.push(m.clone());
        }
    };
    if let Some(TokenizerSource::Model(m)) = &c.tokenizer_source {
        add(m);
    }
    if let Some(t) = &c.tokenizer {
        if let TokenizerSource::Model(m) = &t.source {
            add(m);
        }
        for (_, e) in t.tokens.iter().flatten() {
            if let Some(
                TokenEmbeddingSource::Model(m) | TokenEmbeddingSource::ModelToken { model: m, .. },
            ) = &e.source
            {
                add(m);
            }
        }
    }
    out
}

/// Points every reference to one of `outputs`' names at that merge's output folder.
pub fn redirect_models(c: &mut MergeConfig, outputs: &BTreeMap<String, String>) {
    let fix = |m: &mut ModelRef| {
        if let Some(p) = outputs.get(&m.path) {
            m.path = p.clone();
        }
    };
    if let Some(b) = c.base_model.as_mut() {
        fix(b);
    }
    let fix_models =
        |ms: &mut Vec<crate::InputModel>| ms.iter_mut().for_each(|m| fix(&mut m.model));
    let fix_slices = |ss: &mut Vec<crate::OutputSlice>| {
        for s in ss {
            if let Some(b) = s.base_model.as_mut() {
                fix(b);
            }
            s.sources.iter_mut().for_each(|src| fix(&mut src.model));
        }
    };
    if let Some(ms) = c.models.as_mut() {
        fix_models(ms);
    }
    if let Some(ss) = c.slices.as_mut() {
        fix_slices(ss);
    }
    for (_, m) in c.modules.iter_mut().flatten() {
        if let Some(ms) = m.models.as_mut() {
            fix_models(ms);
        }
        if let Some(ss) = m.slices.as_mut() {
            fix_slices(ss);
        }
    }
    if let Some(TokenizerSource::Model(m)) = c.tokenizer_source.as_mut() {
        fix(m);
    }
    if let Some(t) = c.tokenizer.as_mut() {
        if let TokenizerSource::Model(m) = &mut t.source {
            fix(m);
        }
        for (_, e) in t.tokens.iter_mut().flatten() {
            if let Some(
                TokenEmbeddingSource::Model(m) | TokenEmbeddingSource::ModelToken { model: m, .. },
            ) = e.source.as_mut()
            {
                fix(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "name: step1\nmerge_method: linear\nmodels:\n  - model: a\n    parameters: \
                       {weight: 1}\n---\nmerge_method: linear\nmodels:\n  - model: step1\n    \
                       parameters: {weight: 1}\n";

    #[test]
    fn splits_names_and_orders() {
        assert!(is_multi_document(TWO));
        assert!(!is_multi_document("---\nmerge_method: linear\n"));
        let docs = parse_documents(TWO).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].name.as_deref(), Some("step1"));
        assert_eq!(docs[1].name, None);
        assert!(docs[1].needs.contains("step1"));
        assert_eq!(order(&docs).unwrap(), vec![0, 1]);
        // No "unknown key name" warning: the key belongs to mergekit-multi.
        assert!(
            docs[0].loaded.warnings.is_empty(),
            "{:?}",
            docs[0].loaded.warnings
        );
    }

    #[test]
    fn dependencies_run_first_and_cycles_are_refused() {
        let rev = "merge_method: linear\nmodels:\n  - model: step1\n    parameters: {weight: 1}\n\
                   ---\nname: step1\nmerge_method: linear\nmodels:\n  - model: a\n    \
                   parameters: {weight: 1}\n";
        let docs = parse_documents(rev).unwrap();
        assert_eq!(order(&docs).unwrap(), vec![1, 0]);
        let cycle = "name: x\nmerge_method: linear\nmodels:\n  - model: y\n    parameters: \
                     {weight: 1}\n---\nname: y\nmerge_method: linear\nmodels:\n  - model: x\n    \
                     parameters: {weight: 1}\n";
        let e = parse_documents(cycle).unwrap_err().to_string();
        assert!(
            e.contains("cycle") && e.contains('x') && e.contains('y'),
            "{e}"
        );
    }

    #[test]
    fn duplicate_and_unnamed_documents_are_refused() {
        let dup = "name: x\nmerge_method: linear\nmodels:\n  - model: a\n---\nname: x\n\
                   merge_method: linear\nmodels:\n  - model: b\n";
        let e = parse_documents(dup).unwrap_err().to_string();
        assert!(
            e.contains("Duplicate merge name x") && e.contains("6:1"),
            "{e}"
        );
        let two = "merge_method: linear\nmodels:\n  - model: a\n---\nmerge_method: linear\n\
                   models:\n  - model: b\n";
        let e = parse_documents(two).unwrap_err().to_string();
        assert!(e.contains("unnamed"), "{e}");
    }

    #[test]
    fn diagnostics_keep_file_lines() {
        let bad = "name: x\nmerge_method: linear\nmodels:\n  - model: a\n---\nmerge_method: \
                   linear\nmodels: 3\n";
        let e = parse_documents(bad).unwrap_err().to_string();
        assert!(e.contains("7:"), "{e}");
    }

    #[test]
    fn references_are_redirected() {
        let mut docs = parse_documents(TWO).unwrap();
        let outs = BTreeMap::from([("step1".to_string(), "/tmp/i/step1".to_string())]);
        redirect_models(&mut docs[1].loaded.config, &outs);
        let refs = docs[1].loaded.config.referenced_models();
        assert_eq!(refs[0].path, "/tmp/i/step1");
    }
}

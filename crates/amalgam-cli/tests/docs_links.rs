//! Every relative link in the project's markdown resolves to a file or folder that exists:
//! README.md, docs/*.md, and every README.md under tests/ and configs/. (Links to the web are
//! not checked: the tests run offline.)

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The markdown files whose links are checked.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs = vec![root.join("README.md")];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    in_docs.sort();
    docs.extend(in_docs);
    for dir in ["tests", "configs"] {
        readmes(&root.join(dir), &mut docs);
    }
    docs
}

fn readmes(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            // Model outputs written by mergekit carry their own generated README.md (a model
            // card), whose links point at the Hub: not project documentation.
            if !p.join("mergekit_config.yml").exists() {
                readmes(&p, out);
            }
        } else if p.file_name().is_some_and(|n| n == "README.md") {
            out.push(p);
        }
    }
}

/// The targets of inline links `[text](target)` and images `![alt](target)`, and bare relative
/// paths (`../docs/x.md`), outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Drop inline code spans: `[a](b)` inside backticks is an example, not a link.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        // Bare relative paths in prose (`see ../../docs/x.md`) are links to a reader too.
        for word in plain.split(|c: char| c.is_whitespace() || "()[],;".contains(c)) {
            let word = word.trim_end_matches(['.', ':', '!', '?']);
            if (word.starts_with("./") || word.starts_with("../")) && word.len() > 3 {
                out.push(word.to_string());
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            // `(target "title")`: the target is the first word.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push(target.trim_matches(['<', '>']).to_string());
            rest = &after[end..];
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    target.is_empty()
        || target.starts_with('#')
        || target.contains("://")
        || target.starts_with("mailto:")
}

#[test]
fn relative_links_resolve() {
    let mut broken = Vec::new();
    let docs = documents();
    assert!(docs.len() > 5, "found the documents: {docs:?}");
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("readable markdown");
        let dir = doc.parent().unwrap_or(Path::new("."));
        for target in links(&text) {
            if is_external(&target) {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            if !dir.join(path).exists() {
                let rel = doc.strip_prefix(root()).unwrap_or(doc);
                broken.push(format!("{}: {target}", rel.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn link_extraction() {
    let md = "see [a](docs/a.md#x) and ![i](img.png \"t\"), `[not](code.md)`\n```\n[no](x)\n```\n[w](https://x.y) (see ../b.md §1).";
    let mut got = links(md);
    got.sort();
    assert_eq!(
        got,
        ["../b.md", "docs/a.md#x", "https://x.y", "img.png"].map(String::from)
    );
}

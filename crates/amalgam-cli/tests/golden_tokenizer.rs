//! Vocabulary alignment against mergekit 0.1.5: `tests/golden-tokenizer/` (made by its
//! `make_golden.py`, which records the versions in `versions.json`). Each case runs the real
//! binary from that folder (the configs use relative model paths) and compares with what
//! mergekit wrote:
//!
//! * tensors: same names, dtypes and shapes, bit-identical bytes; except `slerp_union`, whose
//!   float32 slerp of the layer tensors goes through MKL's acos/sin (the embeddings, where the
//!   alignment happens, are still bit-identical; see tests/golden.rs `Ulp1Scale`), and
//!   `union_alt`, whose new regular tokens mergekit numbers in hash-map order: compared up to
//!   that permutation of token ids;
//! * `config.json`: `vocab_size`, `dtype`, `architectures`, `tie_word_embeddings` (the `tied_*`
//!   cases: tied models, which have no `lm_head.weight`, merged with a tokenizer);
//! * tokenizer: the same vocabulary (model vocab and added tokens, ids equal or permuted as
//!   above) and the same added tokens with the same flags; `chat_template.jinja` byte-identical,
//!   except for a built-in template name (`chat_chatml`, `chat_llama3`), where amalgam writes its
//!   own template for the name (rendering-equal to mergekit's: tests/chat-templates);
//!   the same set of files (README.md aside: the generator drops mergekit's card);
//! * a config mergekit rejects: a non-zero exit and mergekit's hint.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use amalgam_io::SafetensorsFile;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden-tokenizer")
}

fn json(p: &Path) -> Value {
    let t = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// token -> id over the model vocabulary and the added tokens, plus the added tokens' flags.
struct Tok {
    ids: BTreeMap<String, u64>,
    added: BTreeMap<String, (u64, Vec<bool>)>,
}

fn tok(folder: &Path) -> Tok {
    let j = json(&folder.join("tokenizer.json"));
    let mut ids = BTreeMap::new();
    for (t, i) in j["model"]["vocab"].as_object().expect("model.vocab") {
        ids.insert(t.clone(), i.as_u64().expect("id"));
    }
    let mut added = BTreeMap::new();
    for a in j["added_tokens"].as_array().expect("added_tokens") {
        let c = a["content"].as_str().expect("content").to_string();
        let id = a["id"].as_u64().expect("id");
        let flags = ["single_word", "lstrip", "rstrip", "normalized", "special"]
            .iter()
            .map(|k| a[*k].as_bool().unwrap_or(false))
            .collect();
        ids.insert(c.clone(), id);
        added.insert(c, (id, flags));
    }
    Tok { ids, added }
}

fn tensors(folder: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let st = SafetensorsFile::open(folder.join("model.safetensors")).expect("safetensors");
    st.tensors()
        .iter()
        .map(|t| {
            let r = st.get(&t.name).expect("tensor");
            (
                t.name.clone(),
                (format!("{:?}", t.dtype), t.shape.clone(), r.data.to_vec()),
            )
        })
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn is_vocab(name: &str) -> bool {
    name.ends_with("embed_tokens.weight") || name == "lm_head.weight"
}

/// The built-in chat template name a case's config gives (`chat_<name>` cases).
fn builtin_template(case: &str) -> Option<&'static str> {
    match case {
        "chat_chatml" => Some("chatml"),
        "chat_llama3" => Some("llama3"),
        _ => None,
    }
}

fn run(case: &str, flags: &[String], out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(dir())
        .arg("merge")
        .arg(format!("configs/{case}.yml"))
        .arg(out)
        .args(flags)
        .output()
        .expect("run amalgam")
}

fn check_case(case: &str, entry: &Value, tmp: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let flags: Vec<String> = entry["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let out = tmp.join(case);
    let o = run(case, &flags, &out);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    if !entry["ok"].as_bool().unwrap_or(false) {
        if o.status.success() {
            errs.push(format!("{case}: mergekit rejected it, amalgam merged"));
        }
        if !stderr.contains("tokenizer: {source: base}") {
            errs.push(format!("{case}: stderr lacks mergekit's hint: {stderr}"));
        }
        return errs;
    }
    if !o.status.success() {
        errs.push(format!("{case}: amalgam failed: {stderr}"));
        return errs;
    }
    let exp = dir().join("expected").join(case);
    let files = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "README.md")
            .collect();
        v.sort();
        v
    };
    if files(&exp) != files(&out) {
        errs.push(format!(
            "{case}: files {:?} vs {:?}",
            files(&exp),
            files(&out)
        ));
    }
    let (ce, ca) = (
        json(&exp.join("config.json")),
        json(&out.join("config.json")),
    );
    for k in [
        "vocab_size",
        "dtype",
        "architectures",
        "tie_word_embeddings",
    ] {
        if ce.get(k) != ca.get(k) {
            errs.push(format!(
                "{case}: config.json {k}: {:?} vs {:?}",
                ce.get(k),
                ca.get(k)
            ));
        }
    }
    let (te, ta) = (tok(&exp), tok(&out));
    // Output id -> expected id, for union_alt's permuted new tokens.
    let mut perm: Vec<usize> = (0..te.ids.len()).collect();
    if te.ids.keys().ne(ta.ids.keys()) {
        errs.push(format!("{case}: tokenizer vocabularies differ"));
    } else {
        for (t, &ie) in &te.ids {
            let ia = ta.ids[t];
            if ie != ia {
                if case == "union_alt" && ie >= 64 && ia >= 64 {
                    perm[ia as usize] = ie as usize;
                } else {
                    errs.push(format!("{case}: token {t:?} id {ia}, mergekit {ie}"));
                }
            }
        }
    }
    let flags_of = |t: &Tok| -> BTreeMap<String, Vec<bool>> {
        t.added
            .iter()
            .map(|(k, v)| (k.clone(), v.1.clone()))
            .collect()
    };
    if flags_of(&te) != flags_of(&ta) {
        errs.push(format!("{case}: added tokens or their flags differ"));
    }
    let jinja = |p: &Path| fs::read(p.join("chat_template.jinja")).ok();
    match builtin_template(case) {
        // A built-in name: mergekit writes its own file, amalgam its own template for the name
        // (other text, the same renderings: tests/chat-templates, amalgam-engine's test
        // chat_templates).
        Some(name) => {
            let ours = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../amalgam-engine/templates/{name}.jinja"));
            let ours = fs::read(&ours).unwrap_or_else(|e| panic!("{}: {e}", ours.display()));
            if jinja(&exp).is_none() || jinja(&out) != Some(ours) {
                errs.push(format!(
                    "{case}: chat_template.jinja is not amalgam's `{name}` template (or mergekit \
                     wrote none)"
                ));
            }
        }
        None => {
            if jinja(&exp) != jinja(&out) {
                errs.push(format!("{case}: chat_template.jinja differs"));
            }
        }
    }
    let (xe, xa) = (tensors(&exp), tensors(&out));
    if xe.keys().ne(xa.keys()) {
        errs.push(format!("{case}: tensor names differ"));
        return errs;
    }
    for (name, (de, se, be)) in &xe {
        let (da, sa, ba) = &xa[name];
        if de != da || se != sa {
            errs.push(format!("{case}: {name}: {de} {se:?} vs {da} {sa:?}"));
            continue;
        }
        if case == "union_alt" && is_vocab(name) {
            let row = be.len() / se[0];
            let ok = (0..se[0]).all(|r| {
                let e = perm[r];
                ba[r * row..(r + 1) * row] == be[e * row..(e + 1) * row]
            });
            if !ok {
                errs.push(format!(
                    "{case}: {name} differs beyond the token permutation"
                ));
            }
        } else if case == "slerp_union" && !is_vocab(name) && de == "F32" {
            let (e, a) = (f32s(be), f32s(ba));
            let scale = e.iter().fold(0f32, |m, x| m.max(x.abs()));
            let tol = scale * f32::EPSILON;
            if e.iter().zip(&a).any(|(x, y)| (x - y).abs() > tol) {
                errs.push(format!("{case}: {name} beyond 1 ulp of its scale"));
            }
        } else if be != ba {
            errs.push(format!("{case}: {name} not bit-identical"));
        }
    }
    errs
}

#[test]
fn tokenizer_golden_cases_match_mergekit() {
    let cases = json(&dir().join("cases.json"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut errs = Vec::new();
    let obj = cases.as_object().expect("cases.json object");
    assert!(obj.len() >= 24, "cases.json lists {} cases", obj.len());
    for c in [
        "chat_chatml",
        "chat_llama3",
        "tied_union",
        "tied_mixed",
        "tied_base_untied",
    ] {
        assert!(
            obj[c]["ok"].as_bool() == Some(true),
            "{c}: mergekit merged it"
        );
    }
    for (case, entry) in obj {
        errs.extend(check_case(case, entry, tmp.path()));
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn validate_reports_a_token_source_model_that_is_not_an_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("c.yml");
    fs::write(
        &cfg,
        "models:\n  - model: ./models/base\n  - model: ./models/chatml\nmerge_method: linear\n\
         parameters:\n  weight: 1.0\ntokenizer:\n  source: ./models/alt\n  tokens:\n    x:\n      \
         source: ./models/padded\n",
    )
    .expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(dir())
        .arg("validate")
        .arg(&cfg)
        .output()
        .expect("run");
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{s}");
    assert!(s.contains("tokenizer.tokens.x.source"), "{s}");
}

//! The real configs of `tests/corpus/real` that use vocabulary alignment (`tokenizer_source`,
//! `tokenizer:`, `chat_template`) and that mergekit 0.1.5 runs, merged on stand-in models: for
//! every model a config names, a tiny Llama with as many layers as the config reads and a
//! `tokenizer.json` of its own (a shared vocabulary plus tokens only that model has, so every
//! union and every permutation has work to do). Each must merge, and the output's embedding rows
//! must match its config.json `vocab_size` and tokenizer.
//!
//! The configs written with `modules: {default: ...}` are merged the same way (with or without a
//! tokenizer config). The configs naming a built-in chat template (026-della `llama3`,
//! 029-della_linear and 054-multislerp `chatml`) merge, with amalgam's template for the name as
//! the output's `chat_template.jinja`. The configs amalgam refuses as not supported yet (LoRA with a
//! tokenizer merge) are checked to be refused as such instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const HIDDEN: usize = 8;
const INTER: usize = 16;
const SHARED: usize = 40;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// A safetensors file of f32 tensors (values from a counter, so models differ).
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)], seed: u32) {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    let mut x = seed.wrapping_mul(2_654_435_761);
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        for _ in 0..n {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let v = ((x >> 8) % 2001) as f32 / 1000.0 - 1.0;
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// A stand-in Llama at `dir` with `layers` layers and a vocabulary of the shared tokens plus
/// `extra` of its own (named after `tag`).
fn stand_in(dir: &Path, layers: usize, tag: usize, extra: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    vocab.extend((3..SHARED).map(|i| format!("tok{i}")));
    vocab.extend((0..extra).map(|i| format!("m{tag}_{i}")));
    let v = vocab.len();
    let specials: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({"id": i, "content": vocab[i], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": specials,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i)))
                .collect::<serde_json::Map<_, _>>(),
            "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
            "eos_token": "</s>", "unk_token": "<unk>",
            "chat_template": format!("{{% for m in messages %}}{{{{ m['content'] }}}}{{% endfor %}} {tag}")})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": layers,
            "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": v,
            "tie_word_embeddings": false, "torch_dtype": "float32"})
        .to_string(),
    )
    .unwrap();
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, HIDDEN]),
        ("lm_head.weight".to_string(), vec![v, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        for (n, s) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.v_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("mlp.gate_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.up_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, INTER]),
        ] {
            t.push((format!("{p}{n}"), s));
        }
    }
    write_safetensors(&dir.join("model.safetensors"), &t, tag as u32 + 1);
}

/// Layers each model must have: the largest `layer_range` end that reads it, else 2.
fn layers_needed(c: &amalgam_config::MergeConfig) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for m in c.referenced_models() {
        out.insert(m.path.clone(), 2);
    }
    // Top-level slices and those of the `default` module (`modules: {default: {slices}}`).
    let module_slices = c
        .modules
        .iter()
        .flatten()
        .flat_map(|(_, m)| m.slices.iter().flatten());
    for s in c.slices.iter().flatten().chain(module_slices) {
        let end = s.sources.iter().map(|x| x.layer_range.1).max().unwrap_or(2);
        for src in &s.sources {
            let e = out.entry(src.model.path.clone()).or_insert(2);
            *e = (*e).max(src.layer_range.1).max(1);
        }
        if let Some(b) = s.base_model.as_ref().or(c.base_model.as_ref()) {
            let e = out.entry(b.path.clone()).or_insert(2);
            *e = (*e).max(end);
        }
    }
    if let Some(b) = &c.base_model {
        let most = out.values().copied().max().unwrap_or(2);
        out.insert(b.path.clone(), most);
    }
    out
}

#[test]
fn corpus_tokenizer_configs_merge_on_stand_ins() {
    let verdicts = std::fs::read_to_string(corpus().join("verdicts.tsv")).unwrap();
    let (mut merged, mut unsupported) = (Vec::new(), Vec::new());
    let mut failures = Vec::new();
    for line in verdicts.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols[2] != "accept" {
            continue;
        }
        let text = std::fs::read_to_string(corpus().join("real").join(cols[0])).unwrap();
        let loaded = amalgam_config::parse_str(&text).unwrap();
        let c = &loaded.config;
        if c.tokenizer_source.is_none()
            && c.tokenizer.is_none()
            && c.chat_template.is_none()
            && c.modules.is_none()
        {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let need = layers_needed(c);
        // The tokenizer source may name a model that is not an input: it needs a folder too.
        let mut extra_models: Vec<String> = Vec::new();
        if let Some(amalgam_config::TokenizerSource::Model(m)) = &c.tokenizer_source {
            extra_models.push(m.path.clone());
        }
        if let Some(t) = &c.tokenizer {
            if let amalgam_config::TokenizerSource::Model(m) = &t.source {
                extra_models.push(m.path.clone());
            }
        }
        // A `modules:` config without any tokenizer option: the models share one vocabulary
        // (mergekit would refuse embeddings of different sizes).
        let aligns =
            c.tokenizer_source.is_some() || c.tokenizer.is_some() || c.chat_template.is_some();
        for (i, (path, layers)) in need.iter().enumerate() {
            let extra = if aligns { 2 + i } else { 0 };
            stand_in(&tmp.path().join(path), *layers, i, extra);
        }
        for (i, path) in extra_models.iter().enumerate() {
            if !need.contains_key(path) {
                stand_in(&tmp.path().join(path), 2, 100 + i, 3);
            }
        }
        std::fs::write(tmp.path().join("c.yml"), &text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
            .args(["merge", "c.yml", "out", "--random-seed", "1", "--quiet"])
            .current_dir(tmp.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", tmp.path().join("no-cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if !o.status.success() {
            if err.contains("not supported yet") {
                unsupported.push(cols[0].to_string());
            } else {
                failures.push(format!("{}: {err}", cols[0]));
            }
            continue;
        }
        // The output's vocabulary is consistent: embedding rows = config.json = tokenizer size.
        let out = tmp.path().join("out");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let folder = amalgam_io::ModelFolder::open(&out).unwrap();
        let rows = folder.get("model.embed_tokens.weight").unwrap().info.shape[0] as u64;
        if cfg["vocab_size"].as_u64() != Some(rows) {
            failures.push(format!(
                "{}: vocab_size {} but {rows} embedding rows",
                cols[0], cfg["vocab_size"]
            ));
        }
        if let Some(template) = c
            .chat_template
            .as_deref()
            .and_then(amalgam_engine::builtin_chat_template)
        {
            let got = std::fs::read_to_string(out.join("chat_template.jinja")).unwrap_or_default();
            if got != template {
                failures.push(format!(
                    "{}: chat_template.jinja is not amalgam's built-in template",
                    cols[0]
                ));
            }
        }
        merged.push(cols[0].to_string());
    }
    eprintln!("merged: {merged:?}\nnot supported yet: {unsupported:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every `modules: {default: ...}` config mergekit runs merges.
    for f in [
        "014-dare_ties.yml",
        "031-della_linear.yml",
        "035-karcher.yml",
        "145-ties.yml",
    ] {
        assert!(merged.iter().any(|m| m == f), "{f} did not merge");
    }
    for f in [
        "026-della.yml",
        "029-della_linear.yml",
        "054-multislerp.yml",
    ] {
        assert!(
            merged.iter().any(|m| m == f),
            "{f} (a built-in chat template) did not merge"
        );
    }
    assert_eq!(
        (merged.len(), unsupported.len()),
        (29, 0),
        "merged {merged:?}, not supported yet {unsupported:?}"
    );
}

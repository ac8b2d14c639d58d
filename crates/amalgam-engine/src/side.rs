//! Side files written next to the shards: config.json, the tokenizer, the model card.

use std::path::Path;

use serde_json::Value as Json;

use crate::plan::Plan;

/// Files mergekit copies byte for byte from the donor when it copies a tokenizer.
pub const TOKENIZER_FILES: [&str; 10] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
    "chat_template.json",
    "video_preprocessor_config.json",
];

/// The output config.json: the donor's, with the dtype and (for `slices`) the layer count
/// updated, serialised like transformers' `save_pretrained` (sorted keys, indent 2, trailing
/// newline). The donor's own keys are kept (no transformers-5 rewriting of `rope_theta`), so
/// older loaders such as candle keep reading it.
pub fn config_json(plan: &Plan) -> Option<Vec<u8>> {
    let donor = &plan.models[plan.donor];
    let mut cfg = donor.config.clone()?;
    if donor.source.is_expert_view() {
        // `#expert=K` of a Mixtral: the output is a dense Mistral.
        cfg = crate::model_config::mistral_config(&cfg, None);
    }
    if let Some(d) = plan.config_out_dtype.or(plan.config_dtype) {
        crate::model_config::set_dtype(&mut cfg, d);
    }
    if let (Some(n), Some(obj)) = (plan.num_layers, cfg.as_object_mut()) {
        let key = crate::arch::NUM_LAYERS_KEYS
            .iter()
            .find(|k| obj.contains_key(**k))
            .copied()
            .unwrap_or("num_hidden_layers");
        obj.insert(key.to_string(), Json::from(n));
    }
    // The layer counts of a multi-module architecture's modules, at their nested keys (the
    // planner kept only those whose parent object the donor's config has).
    for (key, n) in &plan.module_layers {
        let mut parts: Vec<&str> = key.split('.').collect();
        let Some(last) = parts.pop() else { continue };
        let parent = parts
            .into_iter()
            .try_fold(&mut cfg, |v, part| v.get_mut(part));
        if let Some(obj) = parent.and_then(Json::as_object_mut) {
            obj.insert(last.to_string(), Json::from(*n));
        }
    }
    // mergekit's `_update_config_vocab`: the output vocabulary size, padded, under the key the
    // config uses (`text_config.vocab_size` for VL configs that keep the text vocabulary there).
    if let (Some(n), Some(obj)) = (
        plan.tokenizer.as_ref().and_then(|t| t.vocab_size),
        cfg.as_object_mut(),
    ) {
        let nested = !obj.contains_key("vocab_size")
            && obj
                .get("text_config")
                .is_some_and(|t| t.get("vocab_size").is_some());
        match obj.get_mut("text_config").and_then(|t| t.as_object_mut()) {
            Some(text) if nested => {
                text.insert("vocab_size".into(), Json::from(n));
            }
            _ => {
                obj.insert("vocab_size".into(), Json::from(n));
            }
        }
    }
    Some(to_sorted_json(&cfg))
}

/// JSON with sorted keys and 2-space indent, plus a trailing newline.
pub fn to_sorted_json(v: &Json) -> Vec<u8> {
    fn sort(v: &Json) -> Json {
        match v {
            Json::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Json::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            Json::Array(a) => Json::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    let mut s = serde_json::to_string_pretty(&sort(v)).unwrap_or_default();
    s.push('\n');
    s.into_bytes()
}

/// Whether mergekit's model card would call `path` a Hugging Face id. mergekit asks the Hub when
/// a local folder of that name exists; amalgam never goes online for a card and treats an
/// existing local folder as local.
fn is_hf(path: &str, base_dir: &Path) -> bool {
    if path.starts_with('/') || path.starts_with('~') || path.matches('/').count() > 1 {
        return false;
    }
    !base_dir.join(path).exists()
}

fn model_md(path: &str, base_dir: &Path) -> String {
    if is_hf(path, base_dir) {
        format!("[{path}](https://huggingface.co/{path})")
    } else {
        path.to_string()
    }
}

/// A model reference in the card: the model, then ` + ` and its LoRA adapter if any.
fn ref_md(r: &amalgam_config::ModelRef, base_dir: &Path) -> String {
    let mut s = model_md(&r.path, base_dir);
    if let Some(l) = &r.lora {
        s.push_str(" + ");
        s.push_str(&model_md(&l.path, base_dir));
    }
    s
}

/// The README.md model card, as mergekit writes it. Models are listed in config order (mergekit
/// uses a Python set, whose order changes from run to run).
pub fn model_card(plan: &Plan, config_text: &str, name: &str, base_dir: &Path) -> String {
    let info = plan.method.as_ref().map(|m| m.info());
    let method = match info {
        Some(i) => match i.reference_url {
            Some(u) if !u.trim().is_empty() => format!("[{}]({u})", i.pretty_name),
            _ => i.pretty_name.to_string(),
        },
        None => "Copy".to_string(),
    };
    let base = plan
        .base_model
        .filter(|_| info.is_some_and(|i| i.card_names_base));
    // Per model its path, then its LoRA adapter's (mergekit lists both, repeats included).
    let hf: Vec<&str> = plan
        .models
        .iter()
        .flat_map(|m| {
            std::iter::once(m.reference.path.as_str())
                .chain(m.reference.lora.as_ref().map(|l| l.path.as_str()))
        })
        .filter(|p| is_hf(p, base_dir))
        .collect();
    let mut meta = String::from("base_model:");
    if hf.is_empty() {
        meta.push_str(" []\n");
    } else {
        meta.push('\n');
        for p in &hf {
            meta.push_str(&format!("- {}\n", yaml_scalar(p)));
        }
    }
    meta.push_str("library_name: transformers\ntags:\n- mergekit\n- merge\n");
    let base_text = base
        .map(|b| {
            format!(
                " using {} as a base",
                ref_md(&plan.models[b].reference, base_dir)
            )
        })
        .unwrap_or_default();
    let bullets: Vec<String> = plan
        .models
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != base)
        .map(|(_, m)| format!("* {}", ref_md(&m.reference, base_dir)))
        .collect();
    format!(
        "---\n{meta}\n---\n# {name}\n\nThis is a merge of pre-trained language models created using \
         [mergekit](https://github.com/cg123/mergekit).\n\n## Merge Details\n### Merge Method\n\n\
         This model was merged using the {method} merge method{base_text}.\n\n### Models Merged\n\n\
         The following models were included in the merge:\n{}\n\n### Configuration\n\n\
         The following YAML configuration was used to produce this model:\n\n```yaml\n{config_text}\n```\n",
        bullets.join("\n")
    )
}

/// PyYAML quotes plain scalars that would otherwise read as something else.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@".contains(c))
        && !s.starts_with(['-', '.', '@'])
        && s.parse::<f64>().is_err()
        && !["true", "false", "null", "yes", "no", "on", "off", "~"]
            .contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

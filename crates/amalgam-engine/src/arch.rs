//! Architecture knowledge, inferred from tensor names like mergekit's fallback inference, so that
//! Llama, Mistral, Qwen2/3, Gemma and Phi-3 shaped checkpoints work without per-architecture code.
//!
//! A tensor whose name contains `.layers.N.` (or `.h.N.`, `.blocks.N.`) belongs to layer N; every
//! other tensor is a pre-weight (embeddings) or a post-weight (final norm, LM head).

use serde_json::Value;

use crate::mergekit_archs::{
    ModuleTemplate, MERGEKIT_ARCHITECTURES, MERGEKIT_MODULAR, MERGEKIT_MODULE_TEMPLATES,
    MERGEKIT_TAGALONG, MERGEKIT_TEMPLATES,
};

/// A layer tensor name split around its index: `model.layers.3.mlp.up_proj.weight` ->
/// (`model.layers.`, 3, `.mlp.up_proj.weight`).
pub fn split_layer(name: &str) -> Option<(&str, usize, &str)> {
    for marker in [".layers.", ".h.", ".blocks."] {
        let mut search = 0;
        while let Some(pos) = name[search..].find(marker) {
            let start = search + pos + marker.len();
            let rest = &name[start..];
            let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 && rest.as_bytes().get(digits) == Some(&b'.') {
                if let Ok(idx) = rest[..digits].parse() {
                    return Some((&name[..start], idx, &rest[digits..]));
                }
            }
            search = start;
        }
    }
    None
}

/// Builds the name of layer `idx` from a split template.
pub fn layer_name(prefix: &str, idx: usize, suffix: &str) -> String {
    format!("{prefix}{idx}{suffix}")
}

/// Whether a non-layer tensor comes after the layers (final norm, LM head) rather than before.
pub fn is_post_weight(name: &str) -> bool {
    name.starts_with("lm_head")
        || name.starts_with("output.")
        || name.contains("norm")
        || name.contains("ln_f")
        || name.starts_with("score.")
}

/// The config.json keys that hold the layer count, in lookup order.
pub const NUM_LAYERS_KEYS: [&str; 4] = ["num_hidden_layers", "n_layer", "num_layers", "n_layers"];

/// The layer count from config.json, if present.
pub fn num_layers_from_config(cfg: &Value) -> Option<(&'static str, usize)> {
    NUM_LAYERS_KEYS.iter().find_map(|k| {
        cfg.get(*k)
            .and_then(|v| v.as_u64())
            .map(|n| (*k, n as usize))
    })
}

/// The tied-name fallback mergekit's architecture files declare for LM heads.
pub fn tied_name(name: &str) -> Option<&'static str> {
    match name {
        "lm_head.weight" => Some("model.embed_tokens.weight"),
        _ => None,
    }
}

/// What mergekit's architecture definition says about a known architecture: the layer tensors
/// in template order, the tensors before and after the layers (with "optional" flags). mergekit
/// merges exactly these names, requires the non-optional ones, and ignores any other tensor a
/// checkpoint may hold. The template order decides mergekit's task numbering, hence how its
/// scheduler breaks ties between outputs (frankenmerges) and the whole 0.0.4.2 save order.
/// The data is mergekit 0.1.5's own definitions (`mergekit_archs.rs`, generated).
#[derive(Debug)]
pub struct Known {
    /// Layer tensor suffixes, in template order.
    pub layer: &'static [&'static str],
    /// Tensors before the layers, with whether each is optional.
    pub pre: &'static [(&'static str, bool)],
    /// Tensors after the layers, in template order, with whether each is optional.
    pub post: &'static [(&'static str, bool)],
}

/// The template of a model's architecture, when mergekit has a decoder definition for it (see
/// [`mergekit_definition`]); `None` sends the planner to inference from tensor names.
pub fn known(cfg: Option<&Value>, expert_view: bool) -> Option<Known> {
    let def = mergekit_definition(cfg, expert_view)?;
    MERGEKIT_TEMPLATES
        .iter()
        .find(|t| t.definition == def)
        .map(|t| Known {
            layer: t.layer,
            pre: t.pre,
            post: t.post,
        })
}

/// The mergekit architecture definition a model gets (see [`MERGEKIT_ARCHITECTURES`]): by its
/// `architectures[0]`, and by `model_type` when mergekit has several definitions of that name
/// (none then if no model_type matches, as mergekit). An `#expert=K` view is a dense Mistral.
pub fn mergekit_definition(cfg: Option<&Value>, expert_view: bool) -> Option<&'static str> {
    let name = if expert_view {
        "MistralForCausalLM"
    } else {
        architecture_of(cfg)?
    };
    let model_type = cfg
        .and_then(|c| c.get("model_type"))
        .and_then(Value::as_str);
    let candidates: Vec<&(&str, &str, &str)> = MERGEKIT_ARCHITECTURES
        .iter()
        .filter(|(n, _, _)| *n == name)
        .collect();
    match candidates.as_slice() {
        [] => None,
        [(_, _, def)] => Some(def),
        many => many
            .iter()
            .find(|(_, mt, _)| Some(*mt) == model_type || (expert_view && *mt == "mistral"))
            .map(|(_, _, def)| *def),
    }
}

/// The module names of a model's architecture when mergekit defines it with several modules
/// (a VLM's `text_decoder`, `vision_tower`...; see [`MERGEKIT_MODULAR`]); `None` for the
/// single-module ones, whose one module is `default`.
pub fn modules_of(cfg: Option<&Value>, expert_view: bool) -> Option<&'static [&'static str]> {
    let def = mergekit_definition(cfg, expert_view)?;
    MERGEKIT_MODULAR
        .iter()
        .find(|(d, _)| *d == def)
        .map(|(_, names)| *names)
}

/// The modules of a model's multi-module architecture, in mergekit's order, when amalgam plans
/// them (see [`MERGEKIT_MODULE_TEMPLATES`]): each with its weight prefix, layer-count key and
/// weights. `None` for a single-module architecture and for a multi-module one whose weights
/// amalgam's templates cannot express.
pub fn module_templates(
    cfg: Option<&Value>,
    expert_view: bool,
) -> Option<Vec<&'static ModuleTemplate>> {
    let def = mergekit_definition(cfg, expert_view)?;
    let out: Vec<&'static ModuleTemplate> = MERGEKIT_MODULE_TEMPLATES
        .iter()
        .filter(|t| t.definition == def)
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The files mergekit copies from the donor next to the merge for the model's architecture
/// (a VLM's processor configs), empty for most.
pub fn tagalong_files(cfg: Option<&Value>, expert_view: bool) -> &'static [&'static str] {
    mergekit_definition(cfg, expert_view)
        .and_then(|def| MERGEKIT_TAGALONG.iter().find(|(d, _)| *d == def))
        .map_or(&[], |(_, files)| *files)
}

/// A config.json value at a dotted path (`text_config.num_hidden_layers`), as mergekit reads
/// nested configs.
pub fn config_path<'v>(cfg: &'v Value, dotted: &str) -> Option<&'v Value> {
    dotted.split('.').try_fold(cfg, |v, part| v.get(part))
}

/// The class name in a config.json.
pub fn architecture_of(cfg: Option<&Value>) -> Option<&str> {
    cfg?.get("architectures")?.get(0)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_module_architectures_are_known_by_their_modules() {
        let cfg = |a: &str, mt: &str| serde_json::json!({"architectures": [a], "model_type": mt});
        // mergekit 0.1.5's mistral3.json: three modules, none named `default`.
        assert_eq!(
            modules_of(
                Some(&cfg("Mistral3ForConditionalGeneration", "mistral3")),
                false
            ),
            Some(&["text_decoder", "multi_modal_projector", "vision_tower"][..])
        );
        assert_eq!(
            modules_of(
                Some(&cfg("WhisperForConditionalGeneration", "whisper")),
                false
            ),
            Some(&["decoder", "encoder"][..])
        );
        // Decoders have the one module `default`, as has an expert view (a dense Mistral).
        assert_eq!(
            modules_of(Some(&cfg("LlamaForCausalLM", "llama")), false),
            None
        );
        assert_eq!(
            modules_of(
                Some(&cfg("Mistral3ForConditionalGeneration", "mistral3")),
                true
            ),
            None
        );
        assert_eq!(modules_of(None, false), None);
    }

    #[test]
    fn planned_modules_carry_mergekit_prefixes_keys_and_tagalong_files() {
        let cfg = |a: &str, mt: &str| serde_json::json!({"architectures": [a], "model_type": mt});
        let m3 = cfg("Mistral3ForConditionalGeneration", "mistral3");
        let t = module_templates(Some(&m3), false).unwrap();
        let got: Vec<(&str, &str, Option<&str>, Option<usize>)> = t
            .iter()
            .map(|t| {
                (
                    t.module,
                    t.weight_prefix,
                    t.num_layers_key,
                    t.override_num_layers,
                )
            })
            .collect();
        // mergekit 0.1.5's mistral3.json, modules in its order.
        assert_eq!(
            got,
            [
                (
                    "text_decoder",
                    "language_model.",
                    Some("text_config.num_hidden_layers"),
                    None
                ),
                (
                    "multi_modal_projector",
                    "multi_modal_projector.",
                    None,
                    Some(0)
                ),
                (
                    "vision_tower",
                    "vision_tower.",
                    Some("vision_config.num_hidden_layers"),
                    None
                ),
            ]
        );
        assert_eq!(
            t[0].post[1],
            ("lm_head.weight", true, &["model.embed_tokens.weight"][..])
        );
        assert_eq!(
            tagalong_files(Some(&m3), false),
            ["preprocessor_config.json", "processor_config.json"]
        );
        // Decoders have no module templates nor tagalong files; Qwen2-VL's weights are beyond
        // the templates (not planned), its tagalong files are still known.
        let llama = cfg("LlamaForCausalLM", "llama");
        assert!(module_templates(Some(&llama), false).is_none());
        assert!(tagalong_files(Some(&llama), false).is_empty());
        let qwen = cfg("Qwen2VLForConditionalGeneration", "qwen2_vl");
        assert!(module_templates(Some(&qwen), false).is_none());
        assert_eq!(
            config_path(
                &serde_json::json!({"text_config": {"n": 3}}),
                "text_config.n"
            ),
            Some(&serde_json::json!(3))
        );
    }

    #[test]
    fn splits_layer_names() {
        assert_eq!(
            split_layer("model.layers.12.mlp.up_proj.weight"),
            Some(("model.layers.", 12, ".mlp.up_proj.weight"))
        );
        assert_eq!(
            split_layer("transformer.h.0.attn.c_attn.weight"),
            Some(("transformer.h.", 0, ".attn.c_attn.weight"))
        );
        assert_eq!(split_layer("model.embed_tokens.weight"), None);
        assert_eq!(split_layer("model.layers.x.weight"), None);
    }

    #[test]
    fn post_weights() {
        assert!(is_post_weight("model.norm.weight"));
        assert!(is_post_weight("lm_head.weight"));
        assert!(!is_post_weight("model.embed_tokens.weight"));
    }
}

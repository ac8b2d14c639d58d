//! A model's config.json: read in one place, and the two edits amalgam makes to one (the dtype
//! key, Mixtral to dense Mistral). Planning, unmix and the side-file writer all come here.

use amalgam_io::DType;
use serde_json::Value as Json;

use crate::error::{EngineError, Result};

/// A model folder's config.json, parsed (None when the folder has none).
pub fn read_config(folder: &amalgam_io::ModelFolder) -> Result<Option<Json>> {
    let Some(p) = folder.aux_file("config.json") else {
        return Ok(None);
    };
    let err = |reason: String| EngineError::SideFile {
        path: p.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&p).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| err(format!("invalid JSON: {e}")))
}

/// Sets the dtype key of a config.json: `dtype` if the donor uses the transformers-5 spelling,
/// else `torch_dtype` (kept where it is, or added).
pub fn set_dtype(cfg: &mut Json, dtype: DType) {
    if let Some(obj) = cfg.as_object_mut() {
        let key = if obj.contains_key("dtype") {
            "dtype"
        } else {
            "torch_dtype"
        };
        obj.insert(
            key.to_string(),
            Json::String(dtype.torch_name().to_string()),
        );
    }
}

/// The MoE-only keys of a Mixtral config.json, removed for a dense Mistral.
pub const MOE_KEYS: [&str; 5] = [
    "num_local_experts",
    "num_experts_per_tok",
    "output_router_logits",
    "router_aux_loss_coef",
    "router_jitter_noise",
];

/// A Mixtral config.json turned into a dense Mistral one: the MoE keys removed, architecture and
/// model type replaced in place (key order kept), dtype updated.
pub fn mistral_config(mixtral: &Json, dtype: Option<DType>) -> Json {
    let mut cfg = mixtral.clone();
    if let Some(obj) = cfg.as_object_mut() {
        for k in MOE_KEYS {
            obj.shift_remove(k);
        }
        obj.insert(
            "architectures".into(),
            Json::Array(vec![Json::String("MistralForCausalLM".into())]),
        );
        obj.insert("model_type".into(), Json::String("mistral".into()));
    }
    if let Some(d) = dtype {
        set_dtype(&mut cfg, d);
    }
    cfg
}

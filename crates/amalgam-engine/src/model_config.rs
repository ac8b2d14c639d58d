//! A model's config.json: read in one place, and the two edits amalgam makes to one (the dtype
//! key, Mixtral to dense Mistral). Planning, unmix and the side-file writer all come here.

use amalgam_io::DType;
use serde_json::Value as Json;

use crate::error::{EngineError, Result};

/// The largest config.json read: real ones are a few KB; anything near this is not a config.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A model folder's config.json, read and checked (`None` when the folder has none).
///
/// Absent is allowed (amalgam then infers the layout from tensor names; the planner warns that
/// the output will have no config.json). Present but unusable is an error naming the file: a
/// directory, a dangling or looping symlink, a FIFO or device, a symlink out of the model
/// folder, text that is not a JSON object, or keys whose values contradict what a merge writes
/// (a layer count that is not a non-negative integer, `architectures` that is not a list of
/// class names). Copying such a file into the output would publish a config that contradicts
/// the weights.
pub fn read_config(folder: &amalgam_io::ModelFolder) -> Result<Option<Json>> {
    let p = folder.path().join("config.json");
    let err = |reason: String| EngineError::SideFile {
        path: p.clone(),
        reason,
    };
    let Ok(link) = std::fs::symlink_metadata(&p) else {
        return Ok(None);
    };
    let meta = std::fs::metadata(&p).map_err(|e| {
        err(if link.file_type().is_symlink() {
            format!("is a symlink that cannot be followed ({e})")
        } else {
            e.to_string()
        })
    })?;
    if meta.is_dir() {
        return Err(err("is a directory, not a config file".into()));
    }
    if !meta.is_file() {
        return Err(err("is not a regular file (a FIFO or a device?)".into()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "is {} bytes: too large for a model config",
            meta.len()
        )));
    }
    // Confined to the model folder (or its Hugging Face cache repository).
    folder.side_file("config.json")?;
    let text = std::fs::read_to_string(&p).map_err(|e| err(e.to_string()))?;
    let cfg: Json = serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    check_config(&cfg).map_err(err)?;
    Ok(Some(cfg))
}

/// The checks of [`read_config`] on a parsed config.json.
fn check_config(cfg: &Json) -> std::result::Result<(), String> {
    let Some(obj) = cfg.as_object() else {
        return Err(format!(
            "must be a JSON object (`{{...}}`), not {}",
            json_kind(cfg)
        ));
    };
    for key in crate::arch::NUM_LAYERS_KEYS {
        if let Some(v) = obj.get(key) {
            if v.as_u64().filter(|&n| usize::try_from(n).is_ok()).is_none() {
                return Err(format!(
                    "`{key}` must be a non-negative integer, not {}",
                    amalgam_io::display::safe(&v.to_string())
                ));
            }
        }
    }
    if let Some(a) = obj.get("architectures") {
        let names = a.as_array().filter(|l| l.iter().all(Json::is_string));
        if names.is_none() {
            return Err(format!(
                "`architectures` must be a list of class names, not {}",
                json_kind(a)
            ));
        }
    }
    Ok(())
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
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

/// The config's `model_type`, if it is a string.
pub fn model_type(cfg: Option<&Json>) -> Option<&str> {
    cfg?.get("model_type")?.as_str()
}

//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`, or the
//! `adapter_model.bin` pickle), read so that each adapted weight can be merged as it streams.
//!
//! mergekit merges a `model+adapter` reference with peft's `merge_and_unload` into a cached copy
//! of the whole model; amalgam applies the same arithmetic per tensor instead (see
//! [`LoraAdapter`]), so nothing is written to disk. What the adapter holds, after peft's
//! `base_model.model.` key prefix:
//!
//! * `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r] of a linear layer,
//!   merged into `<module>.weight` as `W + scale * (B @ A)`;
//! * `<module>.lora_embedding_A` [r, vocab] and `<module>.lora_embedding_B` [hidden, r] of an
//!   embedding, merged as `W + scale * (B @ A)^T`;
//! * `<module>.base_layer.weight` (peft saves the base embedding with an embedding LoRA) and the
//!   weights of `modules_to_save` modules: whole tensors that replace the model's.
//!
//! `scale` is `lora_alpha / r` (`lora_alpha / sqrt(r)` with `use_rslora`), with `r` and
//! `lora_alpha` taken per module from `rank_pattern` / `alpha_pattern` as peft does: the first
//! pattern key (in file order) that equals the module name or ends it after a `.`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::{convert, DType, Error, Result, SafetensorsFile, TensorRef};

/// The key prefix peft writes before a causal LM's parameter names.
const PREFIX: &str = "base_model.model.";

/// One adapted weight: where its factors are and how they scale.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// The module's name in the model (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// Adapter tensor holding A ([r, in], or [r, vocab] for an embedding).
    pub a: String,
    /// Adapter tensor holding B ([out, r], or [hidden, r] for an embedding).
    pub b: String,
    /// The rank (`r`, or the module's `rank_pattern` entry).
    pub rank: usize,
    /// `alpha / r` (or `alpha / sqrt(r)`) computed in f64 as Python does, then rounded to f32:
    /// PyTorch multiplies an f32 tensor by a Python float in f32.
    pub scale: f32,
    /// An embedding LoRA: the product is transposed (`(B @ A)^T`).
    pub embedding: bool,
}

/// The factors of one module, decoded to f32 (peft upcasts adapter weights to float32 when it
/// loads them, `autocast_adapter_dtype`), row-major.
#[derive(Debug, Clone)]
pub struct LoraFactors {
    /// A, [rank, cols].
    pub a: Vec<f32>,
    /// B, [rows, rank].
    pub b: Vec<f32>,
    /// The rank.
    pub rank: usize,
    /// Columns of B @ A.
    pub cols: usize,
    /// Rows of B @ A.
    pub rows: usize,
    /// See [`LoraModule::scale`].
    pub scale: f32,
    /// B @ A is transposed before it is added (an embedding, or a GPT-2 `Conv1D` layer).
    pub transposed: bool,
}

impl LoraFactors {
    /// Element `idx` (row-major in the weight's shape) of `scale * (B @ A)` (transposed when
    /// [`LoraFactors::transposed`]): each product accumulated in f32 over the rank in order with
    /// fused multiply-adds, then multiplied by the scale in f32.
    ///
    /// PyTorch computes `B @ A` with BLAS; on the fixtures of `tests/golden-lora` (ranks 2 to
    /// 6) this order gives its bits exactly, but a BLAS may block a long rank differently, so
    /// the bound stated in docs/models.md is what is guaranteed.
    pub fn delta(&self, idx: usize) -> f32 {
        let (i, j) = if self.transposed {
            // The weight is [cols, rows] of B @ A: its element (i, j) is (B @ A)[j][i].
            (idx % self.rows, idx / self.rows)
        } else {
            (idx / self.cols, idx % self.cols)
        };
        let mut acc = 0f32;
        for k in 0..self.rank {
            acc = self.b[i * self.rank + k].mul_add(self.a[k * self.cols + j], acc);
        }
        acc * self.scale
    }

    /// The shape of the weight this delta is added to.
    pub fn weight_shape(&self) -> [usize; 2] {
        if self.transposed {
            [self.cols, self.rows]
        } else {
            [self.rows, self.cols]
        }
    }
}

/// An opened adapter: its config checked, its weights file validated and indexed by module.
#[derive(Debug)]
pub struct LoraAdapter {
    path: PathBuf,
    file: SafetensorsFile,
    /// Weight name (`<module>.weight`) -> its LoRA.
    modules: HashMap<String, LoraModule>,
    /// Model tensor name -> adapter tensor that replaces it whole.
    replaced: HashMap<String, String>,
    /// `fan_in_fan_out` of the config (peft overrides it by the layer type; see
    /// [`LoraAdapter::fan_in_fan_out`]).
    fan_in_fan_out: bool,
}

/// Characters that make a `rank_pattern` / `alpha_pattern` / `target_modules` entry a regular
/// expression rather than a module name.
const REGEX_CHARS: &[char] = &[
    '\\', '^', '$', '*', '+', '?', '(', ')', '[', ']', '{', '}', '|',
];

impl LoraAdapter {
    /// Opens the adapter folder `dir`: `adapter_config.json`, then `adapter_model.safetensors`
    /// (or, without it, the `torch.save` file `adapter_model.bin`, read by the same restricted
    /// unpickler as `pytorch_model.bin`).
    ///
    /// Refused by name: PEFT types other than LoRA, DoRA (`use_dora`), `lora_bias`, and the
    /// keys that change which weights exist or how they combine (`layers_to_transform`,
    /// `layer_replication`, `trainable_token_indices`, `target_parameters`, ...); patterns that
    /// are regular expressions; weights the config does not target; factors whose shapes
    /// disagree with the rank.
    pub fn open(dir: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Lora {
            path: dir.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(bad(
                "is not a folder (a PEFT adapter is a folder with adapter_config.json)".into(),
            ));
        }
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read(&cfg_path).map_err(|e| {
            bad(format!(
                "cannot read adapter_config.json ({e}); a `model+adapter` reference needs a PEFT \
                 LoRA adapter folder"
            ))
        })?;
        let cfg: Json = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("adapter_config.json is not JSON: {e}")))?;
        let cfg = cfg
            .as_object()
            .ok_or_else(|| bad("adapter_config.json is not a JSON object".into()))?;
        let config = Config::parse(cfg).map_err(bad)?;
        let st = dir.join("adapter_model.safetensors");
        let bin = dir.join("adapter_model.bin");
        let file = if st.is_file() {
            SafetensorsFile::open(&st)?
        } else if bin.is_file() {
            SafetensorsFile::open_torch(&bin)?
        } else {
            return Err(bad(
                "has neither adapter_model.safetensors nor adapter_model.bin".into(),
            ));
        };
        let wpath = file.path().to_path_buf();
        let wbad = |reason: String| Error::Lora {
            path: wpath.clone(),
            reason,
        };
        // module -> (A, B, embedding?)
        // Sorted, so the first problem reported is the same on every run.
        let mut factors: std::collections::BTreeMap<
            String,
            (Option<String>, Option<String>, bool),
        > = Default::default();
        let mut replaced = HashMap::new();
        for t in file.tensors() {
            let key = &t.name;
            let Some(name) = key.strip_prefix(PREFIX) else {
                return Err(wbad(format!(
                    "tensor `{key}` does not start with `{PREFIX}`, the prefix peft gives a \
                     causal language model's adapter"
                )));
            };
            if !t.dtype.is_float() {
                return Err(wbad(format!("tensor `{key}` is {}, not a float", t.dtype)));
            }
            let split = |suffix: &str| name.strip_suffix(suffix).map(str::to_string);
            if let Some(m) = split(".lora_A.weight") {
                factors.entry(m).or_default().0 = Some(key.clone());
            } else if let Some(m) = split(".lora_B.weight") {
                factors.entry(m).or_default().1 = Some(key.clone());
            } else if let Some(m) = split(".lora_embedding_A") {
                let e = factors.entry(m).or_default();
                e.0 = Some(key.clone());
                e.2 = true;
            } else if let Some(m) = split(".lora_embedding_B") {
                let e = factors.entry(m).or_default();
                e.1 = Some(key.clone());
                e.2 = true;
            } else if name.contains("lora_magnitude_vector") {
                return Err(wbad(format!(
                    "tensor `{key}` is a DoRA magnitude: `use_dora` is not supported yet by \
                     amalgam"
                )));
            } else if name.contains(".lora_") {
                return Err(wbad(format!(
                    "tensor `{key}` is a LoRA part amalgam does not know (a LoRA bias or \
                     variant): not supported yet"
                )));
            } else if let Some(m) = split(".base_layer.weight") {
                replaced.insert(format!("{m}.weight"), key.clone());
            } else if let Some(m) = split(".base_layer.bias") {
                replaced.insert(format!("{m}.bias"), key.clone());
            } else {
                // A module saved whole: peft loads it only for `modules_to_save`.
                let module = name.rsplit_once('.').map_or(name, |(m, _)| m);
                if !config.modules_to_save.iter().any(|t| targets(t, module)) {
                    return Err(wbad(format!(
                        "tensor `{key}` is neither a LoRA factor nor a weight of a \
                         `modules_to_save` module; peft would not load it"
                    )));
                }
                replaced.insert(name.to_string(), key.clone());
            }
        }
        let mut modules = HashMap::new();
        for (module, (a, b, embedding)) in factors {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(wbad(format!(
                    "module `{module}` has only one of its two LoRA factors (A and B)"
                )));
            };
            if !config.targets(&module) {
                return Err(wbad(format!(
                    "module `{module}` has LoRA weights but `target_modules` does not name it; \
                     peft would not apply them"
                )));
            }
            let rank = pattern(&config.rank_pattern, &module).unwrap_or(config.r as f64);
            if rank.fract() != 0.0 || rank < 1.0 {
                return Err(bad(format!(
                    "the rank of `{module}` is {rank}, not a positive integer"
                )));
            }
            let rank = rank as usize;
            let alpha = pattern(&config.alpha_pattern, &module).unwrap_or(config.alpha);
            let scale = if config.rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            } as f32;
            let (sa, sb) = (shape(&file, &a), shape(&file, &b));
            let ok = matches!((sa.as_slice(), sb.as_slice()), ([ra, _], [_, rb]) if *ra == rank && *rb == rank);
            if !ok {
                return Err(wbad(format!(
                    "module `{module}`: A is {sa:?} and B is {sb:?}, but its rank is {rank} \
                     (A must be [rank, in], B [out, rank])"
                )));
            }
            modules.insert(
                format!("{module}.weight"),
                LoraModule {
                    module,
                    a,
                    b,
                    rank,
                    scale,
                    embedding,
                },
            );
        }
        Ok(LoraAdapter {
            path: dir.to_path_buf(),
            file,
            modules,
            replaced,
            fan_in_fan_out: config.fan_in_fan_out,
        })
    }

    /// The adapter folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The weights file.
    pub fn file(&self) -> &SafetensorsFile {
        &self.file
    }

    /// The LoRA of weight `name` (`<module>.weight`), if the adapter adapts it.
    pub fn module(&self, name: &str) -> Option<&LoraModule> {
        self.modules.get(name)
    }

    /// Every adapted weight name.
    pub fn module_names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// The adapter tensor that replaces model tensor `name` whole (`base_layer` weights and
    /// `modules_to_save`), if any.
    pub fn replacement(&self, name: &str) -> Option<TensorRef<'_>> {
        self.file.get(self.replaced.get(name)?)
    }

    /// Every model tensor the adapter replaces whole.
    pub fn replaced_names(&self) -> impl Iterator<Item = &str> {
        self.replaced.keys().map(String::as_str)
    }

    /// The config's `fan_in_fan_out`. peft ignores it for the layer type: it is forced off
    /// for `torch.nn.Linear` and on for GPT-2's `Conv1D`, so the caller decides by the model.
    pub fn fan_in_fan_out(&self) -> bool {
        self.fan_in_fan_out
    }

    /// Decodes the factors of `m`; `conv1d` says the model's layer stores its weight
    /// transposed (GPT-2's `Conv1D`).
    pub fn factors(&self, m: &LoraModule, conv1d: bool) -> Result<LoraFactors> {
        let get = |n: &str| {
            self.file.get(n).ok_or_else(|| Error::Lora {
                path: self.file.path().to_path_buf(),
                reason: format!("tensor `{n}` vanished from the adapter"),
            })
        };
        let (a, b) = (get(&m.a)?, get(&m.b)?);
        let cols = a.info.shape.get(1).copied().unwrap_or(0);
        let rows = b.info.shape.first().copied().unwrap_or(0);
        Ok(LoraFactors {
            a: decode(&self.file, &a)?,
            b: decode(&self.file, &b)?,
            rank: m.rank,
            cols,
            rows,
            scale: m.scale,
            transposed: m.embedding || conv1d,
        })
    }
}

/// A tensor's values as f32, read with positioned reads.
fn decode(file: &SafetensorsFile, t: &TensorRef<'_>) -> Result<Vec<f32>> {
    let mut buf = vec![0u8; t.data.len()];
    if !file.read_part(t.data, &mut buf)? {
        buf.copy_from_slice(t.data);
    }
    if t.info.dtype == DType::F64 {
        let mut tmp = vec![0u8; t.info.numel() * 4];
        convert::convert_bytes(DType::F64, &buf, DType::F32, &mut tmp)?;
        return convert::decode_f32_vec(DType::F32, &tmp);
    }
    convert::decode_f32_vec(t.info.dtype, &buf)
}

fn shape(file: &SafetensorsFile, name: &str) -> Vec<usize> {
    file.get(name)
        .map(|t| t.info.shape.clone())
        .unwrap_or_default()
}

/// Whether module name `module` is `target` or ends with `.target` (peft's list matching).
fn targets(target: &str, module: &str) -> bool {
    module == target
        || module
            .strip_suffix(target)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The value of the first pattern key naming `module` (peft's `get_pattern_key`).
fn pattern(p: &[(String, f64)], module: &str) -> Option<f64> {
    p.iter().find(|(k, _)| targets(k, module)).map(|(_, v)| *v)
}

/// The keys of `adapter_config.json` that decide the arithmetic.
struct Config {
    r: u64,
    alpha: f64,
    rslora: bool,
    fan_in_fan_out: bool,
    rank_pattern: Vec<(String, f64)>,
    alpha_pattern: Vec<(String, f64)>,
    /// `None`: every module (`all-linear`).
    target_modules: Option<Vec<String>>,
    modules_to_save: Vec<String>,
}

impl Config {
    fn parse(cfg: &serde_json::Map<String, Json>) -> std::result::Result<Self, String> {
        let peft_type = cfg.get("peft_type").and_then(Json::as_str);
        if peft_type != Some("LORA") {
            return Err(format!(
                "`peft_type` is {}: only LoRA adapters (`\"LORA\"`) are supported yet by amalgam",
                cfg.get("peft_type")
                    .map_or("missing".into(), |v| v.to_string())
            ));
        }
        let flag = |k: &str| -> std::result::Result<bool, String> {
            match cfg.get(k) {
                None | Some(Json::Null) => Ok(false),
                Some(Json::Bool(b)) => Ok(*b),
                Some(v) => Err(format!("`{k}` is {v}, not true or false")),
            }
        };
        for k in ["use_dora", "lora_bias", "use_qalora", "use_bdlora"] {
            if flag(k).map_err(|e| e.to_string())? {
                return Err(format!(
                    "`{k}: true` is not supported yet by amalgam (only plain LoRA is)"
                ));
            }
        }
        for k in [
            "layers_to_transform",
            "layer_replication",
            "trainable_token_indices",
            "target_parameters",
            "megatron_config",
        ] {
            let set = match cfg.get(k) {
                None | Some(Json::Null) => false,
                Some(Json::Array(a)) => !a.is_empty(),
                Some(Json::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(format!("`{k}` is not supported yet by amalgam"));
            }
        }
        let r = cfg
            .get("r")
            .and_then(Json::as_u64)
            .filter(|&r| r > 0)
            .ok_or("`r` must be a positive integer")?;
        let alpha = cfg
            .get("lora_alpha")
            .and_then(Json::as_f64)
            .ok_or("`lora_alpha` must be a number")?;
        let patterns = |k: &str| -> std::result::Result<Vec<(String, f64)>, String> {
            match cfg.get(k) {
                None | Some(Json::Null) => Ok(Vec::new()),
                Some(Json::Object(o)) => o
                    .iter()
                    .map(|(name, v)| {
                        if name.contains(REGEX_CHARS) {
                            return Err(format!(
                                "`{k}` key `{name}` is a regular expression: not supported yet \
                                 by amalgam (write module names)"
                            ));
                        }
                        let v = v
                            .as_f64()
                            .ok_or_else(|| format!("`{k}.{name}` is {v}, not a number"))?;
                        Ok((name.clone(), v))
                    })
                    .collect(),
                Some(v) => Err(format!("`{k}` is {v}, not an object")),
            }
        };
        let names = |k: &str| -> std::result::Result<Option<Vec<String>>, String> {
            match cfg.get(k) {
                None | Some(Json::Null) => Ok(Some(Vec::new())),
                Some(Json::String(s)) if k == "target_modules" && s == "all-linear" => Ok(None),
                Some(Json::String(s)) => Err(format!(
                    "`{k}` is the regular expression {s:?}: not supported yet by amalgam (write \
                     a list of module names)"
                )),
                Some(Json::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("`{k}` holds {v}, not a module name"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(Some),
                Some(v) => Err(format!("`{k}` is {v}, not a list of module names")),
            }
        };
        Ok(Config {
            r,
            alpha,
            rslora: flag("use_rslora")?,
            fan_in_fan_out: flag("fan_in_fan_out")?,
            rank_pattern: patterns("rank_pattern")?,
            alpha_pattern: patterns("alpha_pattern")?,
            target_modules: names("target_modules")?,
            modules_to_save: names("modules_to_save")?.unwrap_or_default(),
        })
    }

    fn targets(&self, module: &str) -> bool {
        self.target_modules
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| targets(t, module)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_like_peft_lists() {
        assert!(targets("q_proj", "model.layers.0.self_attn.q_proj"));
        assert!(targets(
            "model.layers.1.mlp.down_proj",
            "model.layers.1.mlp.down_proj"
        ));
        assert!(!targets("proj", "model.layers.0.self_attn.q_proj"));
        assert!(!targets("q_proj", "model.layers.0.self_attn.kq_proj"));
    }

    #[test]
    fn delta_transposes_for_embeddings() {
        // B [2, 1], A [1, 3]: B @ A = [[1, 2, 3], [2, 4, 6]].
        let mut f = LoraFactors {
            a: vec![1.0, 2.0, 3.0],
            b: vec![1.0, 2.0],
            rank: 1,
            cols: 3,
            rows: 2,
            scale: 0.5,
            transposed: false,
        };
        let plain: Vec<f32> = (0..6).map(|i| f.delta(i)).collect();
        assert_eq!(plain, [0.5, 1.0, 1.5, 1.0, 2.0, 3.0]);
        f.transposed = true;
        assert_eq!(f.weight_shape(), [3, 2]);
        let t: Vec<f32> = (0..6).map(|i| f.delta(i)).collect();
        assert_eq!(t, [0.5, 1.0, 1.0, 2.0, 1.5, 3.0]);
    }
}

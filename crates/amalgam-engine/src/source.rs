//! Where input tensors come from: a model folder, or one expert of a Mixtral folder seen as a
//! dense Mistral (the `#expert=K` model-reference extension and `amalgam unmix`), optionally
//! with a PEFT LoRA adapter applied as the weights are read ([`LoraView`], `model+adapter`).

use std::path::Path;

use amalgam_io::{DType, ModelFolder, TensorRef};

use crate::error::{EngineError, Result};

/// A tensor's bytes and description, borrowed from a mapped file.
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: &'a [usize],
    /// Little-endian bytes: one slice of a mapped file, or (a per-expert checkpoint read as
    /// the fused layout) several, concatenated in order.
    pub data: TensorBytes<'a>,
    /// File it lives in (the first piece's).
    pub file: &'a Path,
    /// The dtype the model presents: `dtype`, except for a float tensor of a model with a LoRA
    /// adapter, which is in the dtype the LoRA merge is done in (mergekit's merged copy holds
    /// every weight in that dtype).
    pub view_dtype: DType,
}

/// A LoRA adapter applied to a source's weights as they are read (mergekit's `model+adapter`).
#[derive(Debug)]
pub struct LoraView {
    adapter: amalgam_io::lora::LoraAdapter,
    /// The dtype the model is loaded in for the merge (`--lora-merge-dtype`, else the model's
    /// config dtype): every float tensor is cast to it, and `W + delta` is rounded to it.
    dtype: DType,
    /// The model's projections are GPT-2 `Conv1D` layers, whose weights are stored [in, out].
    conv1d: bool,
}

impl LoraView {
    /// The dtype the merge is done in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The adapter.
    pub fn adapter(&self) -> &amalgam_io::lora::LoraAdapter {
        &self.adapter
    }

    /// The factors to add to weight `name`, if the adapter adapts it.
    pub fn factors(&self, name: &str) -> Result<Option<amalgam_io::lora::LoraFactors>> {
        match self.adapter.module(name) {
            Some(m) => Ok(Some(self.adapter.factors(m, self.conv1d && !m.embedding)?)),
            None => Ok(None),
        }
    }
}

/// The bytes of a [`RawTensor`]. Fusing per-expert tensors is a concatenation of their bytes
/// (see [`crate::moe`]), so a fused view is its pieces in order: no copy, no arithmetic.
#[derive(Debug, Clone)]
pub enum TensorBytes<'a> {
    /// One contiguous slice.
    One(&'a [u8]),
    /// Slices to be read one after the other.
    Pieces(Vec<&'a [u8]>),
}

impl<'a> TensorBytes<'a> {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        match self {
            TensorBytes::One(d) => d.len(),
            TensorBytes::Pieces(p) => p.iter().map(|d| d.len()).sum(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slices covering bytes `start..end`, in order; `None` if the range is out of bounds.
    pub fn range(&self, start: usize, end: usize) -> Option<Vec<&'a [u8]>> {
        if start > end || end > self.len() {
            return None;
        }
        match self {
            TensorBytes::One(d) => Some(vec![d.get(start..end)?]),
            TensorBytes::Pieces(p) => {
                let mut out = Vec::new();
                let mut at = 0usize;
                for d in p {
                    let (a, b) = (at, at + d.len());
                    at = b;
                    let (s, e) = (start.max(a), end.min(b));
                    if s < e {
                        out.push(d.get(s - a..e - a)?);
                    }
                }
                Some(out)
            }
        }
    }

    /// The bytes, copied into one buffer (small integer buffers only).
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            TensorBytes::One(d) => d.to_vec(),
            TensorBytes::Pieces(p) => p.concat(),
        }
    }
}

/// How dense MLP names map to one expert of a Mixtral checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoeLayout {
    /// `block_sparse_moe.experts.E.w{1,2,3}.weight` (the Hub's on-disk layout).
    PerExpert,
    /// `mlp.experts.gate_up_proj` [E, 2I, H] and `mlp.experts.down_proj` [E, H, I]
    /// (the transformers-5 fused layout).
    Fused,
}

/// An input model: a whole folder, or expert `k` of a Mixtral folder presented as a dense Mistral.
#[derive(Debug)]
pub struct Source {
    folder: ModelFolder,
    expert: Option<(usize, MoeLayout)>,
    /// Experts in the checkpoint (expert views only).
    n_experts: usize,
    shapes: std::collections::HashMap<String, Vec<usize>>,
    names: Vec<String>,
    lora: Option<LoraView>,
    /// A per-expert Mixtral checkpoint read in the fused layout: fused name -> (shape, the
    /// checkpoint tensors it concatenates). Empty otherwise.
    fused: std::collections::BTreeMap<String, (Vec<usize>, Vec<String>)>,
}

/// Elements of `shape` times `elem` bytes, `None` on overflow. A header only guarantees that
/// the product of the *whole* shape fits (a leading 0 hides any later dimension), so the
/// per-expert part of a fused tensor needs its own check.
fn checked_bytes(shape: &[usize], elem: usize) -> Option<usize> {
    shape.iter().try_fold(elem, |acc, &d| acc.checked_mul(d))
}

/// Checks that fused tensor `name` of shape `s` holds expert `k`, and that one expert's block
/// is addressable, so [`Source::get`] can slice it without overflow.
fn check_fused(t: &TensorRef<'_>, name: &str, k: usize) -> Result<()> {
    let s = &t.info.shape;
    let experts = s.first().copied().unwrap_or(0);
    if k >= experts {
        return Err(EngineError::Expert {
            path: t.path.to_path_buf(),
            reason: format!(
                "`{name}` has shape {s:?}, which holds {experts} experts; expert {k} was requested"
            ),
        });
    }
    if checked_bytes(s.get(1..).unwrap_or(&[]), t.info.dtype.size()).is_none() {
        return Err(EngineError::Expert {
            path: t.path.to_path_buf(),
            reason: format!(
                "`{name}` has shape {s:?}, too large for one expert's block to be addressed"
            ),
        });
    }
    Ok(())
}

/// The per-expert layout's consistency, checked before anything is copied: every MoE layer
/// holds the same experts `0..n` with all of `w1`, `w2`, `w3`, and expert `k`'s matrices have
/// the shapes a dense MLP needs (`w1`, `w3`: [intermediate, hidden]; `w2`: [hidden,
/// intermediate]), so a renamed, missing or transposed tensor fails here instead of producing an
/// incomplete or wrong expert. Returns `n`, the expert count the tensors show.
fn check_per_expert(folder: &ModelFolder, all: &[String], k: usize) -> Result<usize> {
    use std::collections::{BTreeMap, BTreeSet};
    let err = |reason: String| EngineError::Expert {
        path: folder.path().to_path_buf(),
        reason,
    };
    let mut layers: BTreeMap<&str, BTreeMap<usize, BTreeSet<&str>>> = BTreeMap::new();
    for n in all {
        let Some((prefix, rest)) = layer_split(n) else {
            continue;
        };
        let Some(r) = rest.strip_prefix("block_sparse_moe.experts.") else {
            continue;
        };
        let (e, w) = r.split_once('.').unwrap_or((r, ""));
        let e: usize = e.parse().map_err(|_| {
            err(format!(
                "`{}` is not an expert tensor name (`...experts.E.w1.weight`)",
                amalgam_io::display::safe(n)
            ))
        })?;
        layers
            .entry(prefix)
            .or_default()
            .entry(e)
            .or_default()
            .insert(w);
    }
    let n = layers
        .values()
        .filter_map(|experts| experts.keys().next_back())
        .max()
        .map_or(0, |&m| m.saturating_add(1));
    for (prefix, experts) in &layers {
        if experts.len() != n {
            let missing: Vec<usize> = (0..n).filter(|e| !experts.contains_key(e)).collect();
            return Err(err(format!(
                "layer `{prefix}` lacks experts {missing:?} of 0..{}",
                n.saturating_sub(1)
            )));
        }
        for (e, ws) in experts {
            for w in ["w1.weight", "w2.weight", "w3.weight"] {
                if !ws.contains(w) {
                    return Err(err(format!(
                        "`{prefix}block_sparse_moe.experts.{e}.{w}` is missing"
                    )));
                }
            }
        }
        if k >= n {
            continue;
        }
        let shape = |w: &str| -> Result<Vec<usize>> {
            let name = format!("{prefix}block_sparse_moe.experts.{k}.{w}");
            Ok(folder.require(&name)?.info.shape.to_vec())
        };
        let (w1, w2, w3) = (
            shape("w1.weight")?,
            shape("w2.weight")?,
            shape("w3.weight")?,
        );
        let ok = matches!((w1.as_slice(), w2.as_slice()), ([i, h], [h2, i2]) if h == h2 && i == i2)
            && w1 == w3;
        if !ok {
            return Err(err(format!(
                "expert {k} of layer `{prefix}` has w1 {w1:?}, w2 {w2:?}, w3 {w3:?}; a dense MLP \
                 needs w1 = w3 = [intermediate, hidden] and w2 = [hidden, intermediate] \
                 (transposed?)"
            )));
        }
    }
    Ok(n)
}

use crate::moe::layer_split;

impl Source {
    /// A whole folder.
    pub fn folder(folder: ModelFolder) -> Self {
        let names = folder.names().into_iter().map(String::from).collect();
        Source {
            folder,
            expert: None,
            n_experts: 0,
            shapes: Default::default(),
            names,
            lora: None,
            fused: Default::default(),
        }
    }

    /// A whole Mixtral folder, whatever its expert layout, seen in the fused layout mergekit
    /// 0.1.5 merges (see [`crate::moe`]): a per-expert checkpoint's expert matrices and router
    /// are offered under the fused names and hidden under their own.
    pub fn moe_folder(folder: ModelFolder) -> Result<Self> {
        let all: Vec<String> = folder.names().into_iter().map(String::from).collect();
        if !crate::moe::has_per_expert(&all) {
            return Ok(Self::folder(folder));
        }
        let err = |reason: String| EngineError::Expert {
            path: folder.path().to_path_buf(),
            reason,
        };
        if crate::moe::has_fused(&all) {
            return Err(err(
                "the checkpoint holds both per-expert (`block_sparse_moe.experts.E.w1.weight`) \
                 and fused (`mlp.experts.gate_up_proj`) expert tensors; keep one layout"
                    .into(),
            ));
        }
        let view = crate::moe::fused_view(all.iter().map(String::as_str), |n| {
            folder
                .get(n)
                .map(|t| (t.info.shape.to_vec(), t.info.dtype.to_string()))
        })
        .map_err(err)?;
        let mut names = Vec::new();
        let mut placed = std::collections::HashSet::new();
        for n in &all {
            if !view.replaced.contains(n) {
                names.push(n.clone());
                continue;
            }
            // A fused tensor takes the place of its first part.
            for (fname, (_, parts)) in &view.tensors {
                if parts.first() == Some(n) && placed.insert(fname.clone()) {
                    names.push(fname.clone());
                }
            }
        }
        Ok(Source {
            folder,
            expert: None,
            n_experts: 0,
            shapes: Default::default(),
            names,
            lora: None,
            fused: view.tensors,
        })
    }

    /// Whether a per-expert checkpoint is read in the fused layout.
    pub fn is_fused_view(&self) -> bool {
        !self.fused.is_empty()
    }

    /// Expert `k` of a Mixtral folder, in either on-disk layout.
    pub fn expert(folder: ModelFolder, k: usize) -> Result<Self> {
        let all: Vec<String> = folder.names().into_iter().map(String::from).collect();
        let per_expert = all.iter().any(|n| n.contains(".block_sparse_moe.experts."));
        let fused = all.iter().any(|n| n.ends_with(".mlp.experts.gate_up_proj"));
        let layout = match (per_expert, fused) {
            (true, false) => MoeLayout::PerExpert,
            (false, true) => MoeLayout::Fused,
            _ => {
                return Err(EngineError::Expert {
                    path: folder.path().to_path_buf(),
                    reason: format!(
                    "not a Mixtral checkpoint (expected `block_sparse_moe.experts.E.w1.weight` or \
                     `mlp.experts.gate_up_proj` tensors) so `#expert={k}` cannot be applied"
                ),
                })
            }
        };
        let mut names = Vec::new();
        let mut shapes = std::collections::HashMap::new();
        let mut n_experts = None;
        // Fused tensors, checked once the expert count is known (see `check_fused`).
        let mut fused: Vec<&String> = Vec::new();
        for n in &all {
            let Some((prefix, rest)) = layer_split(n) else {
                names.push(n.clone());
                continue;
            };
            match layout {
                MoeLayout::PerExpert => {
                    if let Some(r) = rest.strip_prefix("block_sparse_moe.experts.") {
                        let (e, w) = r.split_once('.').unwrap_or((r, ""));
                        let e: usize = e.parse().unwrap_or(usize::MAX);
                        n_experts = Some(n_experts.unwrap_or(0).max(e.saturating_add(1)));
                        if e == k {
                            let dense = match w {
                                "w1.weight" => "mlp.gate_proj.weight",
                                "w2.weight" => "mlp.down_proj.weight",
                                "w3.weight" => "mlp.up_proj.weight",
                                _ => continue,
                            };
                            names.push(format!("{prefix}{dense}"));
                        }
                    } else if rest != "block_sparse_moe.gate.weight" {
                        names.push(n.clone());
                    }
                }
                MoeLayout::Fused => match rest {
                    "mlp.experts.gate_up_proj" => {
                        let t = folder.require(n)?;
                        let s = &t.info.shape;
                        let &[e, two_i, h] = s.as_slice() else {
                            return Err(EngineError::Expert {
                path: t.path.to_path_buf(),
                reason: format!("`{n}` has shape {s:?}, expected [experts, 2*intermediate, hidden]"),
            });
                        };
                        if two_i % 2 != 0 {
                            return Err(EngineError::Expert {
                path: t.path.to_path_buf(),
                reason: format!("`{n}` has shape {s:?}, expected [experts, 2*intermediate, hidden] \
                                 (an even middle dimension)"),
            });
                        }
                        n_experts = Some(e);
                        fused.push(n);
                        let g = format!("{prefix}mlp.gate_proj.weight");
                        let u = format!("{prefix}mlp.up_proj.weight");
                        shapes.insert(g.clone(), vec![two_i / 2, h]);
                        shapes.insert(u.clone(), vec![two_i / 2, h]);
                        names.push(g);
                        names.push(u);
                    }
                    "mlp.experts.down_proj" => {
                        let t = folder.require(n)?;
                        let s = &t.info.shape;
                        let &[_, h, i] = s.as_slice() else {
                            return Err(EngineError::Expert {
                path: t.path.to_path_buf(),
                reason: format!("`{n}` has shape {s:?}, expected [experts, hidden, intermediate]"),
            });
                        };
                        fused.push(n);
                        let d = format!("{prefix}mlp.down_proj.weight");
                        shapes.insert(d.clone(), vec![h, i]);
                        names.push(d);
                    }
                    "mlp.gate.weight" => {}
                    _ => names.push(n.clone()),
                },
            }
        }
        let n_experts = match layout {
            MoeLayout::PerExpert => check_per_expert(&folder, &all, k)?,
            MoeLayout::Fused => n_experts.unwrap_or(0),
        };
        if k >= n_experts {
            return Err(EngineError::Expert {
                path: folder.path().to_path_buf(),
                reason: format!(
                    "expert {k} requested but the checkpoint has {n_experts} experts (0..{__X__})",
                    __X__ = n_experts.saturating_sub(1)
                ),
            });
        }
        for n in fused {
            check_fused(&folder.require(n)?, n, k)?;
        }
        Ok(Source {
            folder,
            expert: Some((k, layout)),
            n_experts,
            shapes,
            names,
            lora: None,
            fused: Default::default(),
        })
    }

    /// How many experts the checkpoint holds (counted from its tensors), for an expert view.
    pub fn num_experts(&self) -> Option<usize> {
        self.expert.map(|_| self.n_experts)
    }

    /// The underlying folder.
    pub fn folder_ref(&self) -> &ModelFolder {
        &self.folder
    }

    /// Tensor names this source offers (dense names for an expert view).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the source offers `name`.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The name of the underlying checkpoint tensor holding `name` (for shard lookup and the
    /// 0.0.4.2 save order).
    pub fn storage_name(&self, name: &str) -> Option<String> {
        if let Some((_, parts)) = self.fused.get(name) {
            return parts.first().cloned();
        }
        match self.expert {
            None => Some(name.to_string()),
            Some((k, layout)) => {
                let Some((prefix, rest)) = layer_split(name) else {
                    return Some(name.to_string());
                };
                let mapped = match (layout, rest) {
                    (MoeLayout::PerExpert, "mlp.gate_proj.weight") => {
                        format!("{prefix}block_sparse_moe.experts.{k}.w1.weight")
                    }
                    (MoeLayout::PerExpert, "mlp.down_proj.weight") => {
                        format!("{prefix}block_sparse_moe.experts.{k}.w2.weight")
                    }
                    (MoeLayout::PerExpert, "mlp.up_proj.weight") => {
                        format!("{prefix}block_sparse_moe.experts.{k}.w3.weight")
                    }
                    (MoeLayout::Fused, "mlp.gate_proj.weight" | "mlp.up_proj.weight") => {
                        format!("{prefix}mlp.experts.gate_up_proj")
                    }
                    (MoeLayout::Fused, "mlp.down_proj.weight") => {
                        format!("{prefix}mlp.experts.down_proj")
                    }
                    _ => name.to_string(),
                };
                Some(mapped)
            }
        }
    }

    /// Looks a tensor up by (dense) name: with a LoRA adapter, a tensor the adapter replaces
    /// whole comes from the adapter, and float tensors present the merge dtype.
    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        let mut raw = self.get_own(name)?;
        if let Some(l) = &self.lora {
            if let Some(t) = l.adapter.replacement(name) {
                raw = RawTensor {
                    dtype: t.info.dtype,
                    shape: &t.info.shape,
                    data: TensorBytes::One(t.data),
                    file: t.path,
                    view_dtype: t.info.dtype,
                };
            }
            if raw.dtype.is_float() {
                raw.view_dtype = l.dtype;
            }
        }
        Some(raw)
    }

    /// Applies LoRA `adapter` to this source: every weight it adapts must exist with the shape
    /// of its `B @ A` (transposed for an embedding or, `conv1d`, a GPT-2 `Conv1D` layer), and
    /// every tensor it replaces must exist with the same shape.
    pub fn with_lora(
        mut self,
        adapter: amalgam_io::lora::LoraAdapter,
        dtype: DType,
        conv1d: bool,
    ) -> Result<Self> {
        let bad = |reason: String| {
            EngineError::Io(amalgam_io::Error::Lora {
                path: adapter.path().to_path_buf(),
                reason,
            })
        };
        let mut names: Vec<&str> = adapter.module_names().collect();
        names.sort_unstable();
        for n in names {
            let Some(t) = self.get_own(n) else {
                return Err(bad(format!(
                    "adapts `{n}`, which the model {} does not have (an adapter for another                      model?)",
                    amalgam_io::display::safe_path(self.path())
                )));
            };
            let Some(m) = adapter.module(n) else { continue };
            let f = adapter.factors(m, conv1d && !m.embedding)?;
            if t.shape != f.weight_shape() {
                return Err(bad(format!(
                    "`{n}` is {:?} in the model but the adapter's B @ A{} is {:?} (an adapter                      for another model?)",
                    t.shape,
                    if f.transposed { " transposed" } else { "" },
                    f.weight_shape()
                )));
            }
        }
        let mut names: Vec<&str> = adapter.replaced_names().collect();
        names.sort_unstable();
        for n in names {
            let (Some(t), Some(r)) = (self.get_own(n), adapter.replacement(n)) else {
                return Err(bad(format!(
                    "holds a whole `{n}`, which the model does not have"
                )));
            };
            if t.shape != r.info.shape.as_slice() {
                return Err(bad(format!(
                    "`{n}` is {:?} in the model but {:?} in the adapter",
                    t.shape, r.info.shape
                )));
            }
        }
        self.lora = Some(LoraView {
            adapter,
            dtype,
            conv1d,
        });
        Ok(self)
    }

    /// The LoRA applied to this source, if any.
    pub fn lora(&self) -> Option<&LoraView> {
        self.lora.as_ref()
    }

    /// Copies `part` (a slice of one of the tensors handed out by [`Source::get`]) into `buf`
    /// with positioned reads.
    pub fn read_part(&self, part: &[u8], buf: &mut [u8]) -> Result<()> {
        if let Some(l) = &self.lora {
            if l.adapter.file().read_part(part, buf)? {
                return Ok(());
            }
        }
        Ok(self.folder.read_part(part, buf)?)
    }

    /// The checkpoint's own tensor (no adapter).
    fn get_own(&self, name: &str) -> Option<RawTensor<'_>> {
        if let Some((shape, parts)) = self.fused.get(name) {
            let mut pieces = Vec::with_capacity(parts.len());
            let mut first = None;
            for p in parts {
                let t = self.folder.get(p)?;
                first.get_or_insert((t.info.dtype, t.path));
                pieces.push(t.data);
            }
            let (dtype, file) = first?;
            return Some(RawTensor {
                dtype,
                shape,
                data: TensorBytes::Pieces(pieces),
                file,
                view_dtype: dtype,
            });
        }
        if self.hidden(name) {
            return None;
        }
        let storage = self.storage_name(name)?;
        let t: TensorRef<'_> = self.folder.get(&storage)?;
        match (self.expert, self.shapes.get(name)) {
            (Some((k, MoeLayout::Fused)), Some(shape)) => {
                // Expert k's block of a [E, a, b] tensor is contiguous; gate is the first half of
                // gate_up's rows, up the second half.
                // Checked math throughout: the sizes come from a header (see `checked_bytes`).
                let es = t.info.dtype.size();
                let per_expert = checked_bytes(t.info.shape.get(1..)?, es)?;
                let part = checked_bytes(shape, es)?;
                let mut start = k.checked_mul(per_expert)?;
                if name.ends_with("mlp.up_proj.weight") {
                    start = start.checked_add(part)?;
                }
                let data = t.data.get(start..start.checked_add(part)?)?;
                Some(RawTensor {
                    dtype: t.info.dtype,
                    shape,
                    data: TensorBytes::One(data),
                    file: t.path,
                    view_dtype: t.info.dtype,
                })
            }
            _ => Some(RawTensor {
                dtype: t.info.dtype,
                shape: &t.info.shape,
                data: TensorBytes::One(t.data),
                file: t.path,
                view_dtype: t.info.dtype,
            }),
        }
    }

    /// Whether `name` is a checkpoint tensor a fused view replaces (not offered by its own name).
    fn hidden(&self, name: &str) -> bool {
        !self.fused.is_empty()
            && crate::moe::layer_split(name).is_some_and(|(_, r)| {
                r.starts_with("block_sparse_moe.experts.") || r == "block_sparse_moe.gate.weight"
            })
    }

    /// Like [`Source::get`], erroring with the model named.
    pub fn require(&self, name: &str, model: &str) -> Result<RawTensor<'_>> {
        self.get(name).ok_or_else(|| EngineError::MissingTensor {
            tensor: name.to_string(),
            model: model.to_string(),
            path: self.folder.path().to_path_buf(),
        })
    }

    /// The file (relative shard name) holding `name`, for the 0.0.4.2 save order.
    pub fn shard_of(&self, name: &str) -> Option<String> {
        let storage = self.storage_name(name)?;
        self.folder.shard_of(&storage).map(String::from)
    }

    /// The model folder path.
    pub fn path(&self) -> &Path {
        self.folder.path()
    }

    /// Whether this is an expert view.
    pub fn is_expert_view(&self) -> bool {
        self.expert.is_some()
    }
}

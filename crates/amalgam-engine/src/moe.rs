//! Whole mixture-of-experts (Mixtral) checkpoints in their two on-disk layouts.
//!
//! A Mixtral layer's experts are stored either one matrix per expert
//! (`block_sparse_moe.experts.E.w1/w2/w3.weight`, what older checkpoints hold and what
//! transformers 5 `save_pretrained` still writes) or fused (`mlp.experts.gate_up_proj`
//! [E, 2I, H] = for each expert its `w1` rows then its `w3` rows, and `mlp.experts.down_proj`
//! [E, H, I] = the `w2`s stacked), with the router renamed from `block_sparse_moe.gate` to
//! `mlp.gate`. mergekit 0.1.5's Mixtral definition names the fused tensors and it converts a
//! per-expert checkpoint on reading (through transformers' checkpoint conversion), so a merge
//! reads either layout and writes the fused one. Both conversions are a reordering of whole
//! matrices: the fused tensor's bytes are its per-expert matrices' bytes, concatenated in the
//! order [`fused_parts`] gives, which is all this module computes.

use std::collections::{BTreeMap, BTreeSet};

/// Which layout `amalgam merge` writes a whole-MoE model's experts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MoeLayout {
    /// `mlp.experts.gate_up_proj` / `down_proj` and `mlp.gate.weight`: what mergekit 0.1.5
    /// writes, and what transformers 5 holds in memory.
    #[default]
    Fused,
    /// `block_sparse_moe.experts.E.w1/w2/w3.weight` and `block_sparse_moe.gate.weight`: for
    /// loaders older than transformers 5 (an amalgam option; mergekit 0.1.5 has none).
    PerExpert,
}

const GATE_UP: &str = "mlp.experts.gate_up_proj";
const DOWN: &str = "mlp.experts.down_proj";
const ROUTER: &str = "mlp.gate.weight";
const OLD_ROUTER: &str = "block_sparse_moe.gate.weight";
const OLD_EXPERTS: &str = "block_sparse_moe.experts.";

/// Splits `model.layers.N.<rest>` into (`model.layers.N.`, `<rest>`).
pub(crate) fn layer_split(name: &str) -> Option<(&str, &str)> {
    let idx = name.find(".layers.")?;
    let after = &name[idx + 8..];
    let dot = after.find('.')?;
    if dot == 0 || !after[..dot].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(name.split_at(idx + 8 + dot + 1))
}

/// The per-expert tensors (name, shape) whose bytes, concatenated in this order, are the bytes
/// of fused tensor `name` of shape `shape`; the router's old name for `mlp.gate.weight`; `None`
/// for any other tensor (it is the same in both layouts).
pub fn fused_parts(name: &str, shape: &[usize]) -> Option<Vec<(String, Vec<usize>)>> {
    let (prefix, rest) = layer_split(name)?;
    match (rest, shape) {
        (GATE_UP, &[e, two_i, h]) if two_i % 2 == 0 => Some(
            (0..e)
                .flat_map(|k| {
                    ["w1", "w3"].map(|w| {
                        (
                            format!("{prefix}{OLD_EXPERTS}{k}.{w}.weight"),
                            vec![two_i / 2, h],
                        )
                    })
                })
                .collect(),
        ),
        (DOWN, &[e, h, i]) => Some(
            (0..e)
                .map(|k| (format!("{prefix}{OLD_EXPERTS}{k}.w2.weight"), vec![h, i]))
                .collect(),
        ),
        (ROUTER, _) => Some(vec![(format!("{prefix}{OLD_ROUTER}"), shape.to_vec())]),
        _ => None,
    }
}

/// What a per-expert checkpoint looks like once fused: for each fused name (`gate_up_proj`,
/// `down_proj`, the renamed router) its shape and the checkpoint tensors it concatenates; and
/// the checkpoint names it replaces.
#[derive(Debug, Default)]
pub(crate) struct FusedView {
    /// Fused name -> (shape, checkpoint names in byte order).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<String>)>,
    /// Checkpoint names that the fused names replace.
    pub replaced: BTreeSet<String>,
}

/// Builds the fused view of the per-expert tensors among `names` (`shape_of` gives a tensor's
/// shape and dtype name). Every MoE layer must hold experts `0..n` (the same `n` everywhere),
/// each with `w1`, `w2`, `w3` of one shape per layer (`w1` = `w3` = [I, H], `w2` = [H, I]) and
/// one dtype, so that the concatenation is the tensor transformers would build; anything else
/// is an error naming the tensor, since mergekit would fail or build something else.
pub(crate) fn fused_view<'a>(
    names: impl IntoIterator<Item = &'a str>,
    shape_of: impl Fn(&str) -> Option<(Vec<usize>, String)>,
) -> Result<FusedView, String> {
    // layer prefix -> expert -> matrix -> checkpoint name
    let mut layers: BTreeMap<String, BTreeMap<usize, BTreeMap<String, String>>> = BTreeMap::new();
    let mut view = FusedView::default();
    for n in names {
        let Some((prefix, rest)) = layer_split(n) else {
            continue;
        };
        if rest == OLD_ROUTER {
            let (shape, _) = shape_of(n).ok_or_else(|| format!("`{n}` has no header entry"))?;
            view.tensors
                .insert(format!("{prefix}{ROUTER}"), (shape, vec![n.to_string()]));
            view.replaced.insert(n.to_string());
            continue;
        }
        let Some(r) = rest.strip_prefix(OLD_EXPERTS) else {
            continue;
        };
        let bad = || {
            format!(
                "`{}` is not a per-expert tensor name (`...{OLD_EXPERTS}E.w1.weight`, w1/w2/w3)",
                amalgam_io::display::safe(n)
            )
        };
        let (e, w) = r.split_once('.').ok_or_else(bad)?;
        let e: usize = e.parse().map_err(|_| bad())?;
        if !matches!(w, "w1.weight" | "w2.weight" | "w3.weight") {
            return Err(bad());
        }
        layers
            .entry(prefix.to_string())
            .or_default()
            .entry(e)
            .or_default()
            .insert(w.to_string(), n.to_string());
        view.replaced.insert(n.to_string());
    }
    let n = layers
        .values()
        .filter_map(|ex| ex.keys().next_back())
        .max()
        .map_or(0, |&m| m + 1);
    for (prefix, experts) in &layers {
        let mut dtype: Option<String> = None;
        let mut shapes: [Option<Vec<usize>>; 3] = Default::default();
        for e in 0..n {
            let Some(ws) = experts.get(&e) else {
                return Err(format!(
                    "layer `{prefix}` lacks expert {e} (the checkpoint has experts 0..{})",
                    n - 1
                ));
            };
            for (slot, w) in ["w1.weight", "w2.weight", "w3.weight"].iter().enumerate() {
                let name = ws
                    .get(*w)
                    .ok_or_else(|| format!("`{prefix}{OLD_EXPERTS}{e}.{w}` is missing"))?;
                let (shape, dt) =
                    shape_of(name).ok_or_else(|| format!("`{name}` has no header entry"))?;
                if dtype.get_or_insert_with(|| dt.clone()) != &dt {
                    return Err(format!(
                        "`{name}` is {dt} but other experts of layer `{prefix}` are {}; the \
                         fused layout needs one dtype",
                        dtype.unwrap_or_default()
                    ));
                }
                match &shapes[slot] {
                    None => shapes[slot] = Some(shape),
                    Some(s) if *s == shape => {}
                    Some(s) => {
                        return Err(format!(
                            "`{name}` has shape {shape:?} but expert 0's is {s:?}; experts of \
                             one layer must have the same shapes"
                        ))
                    }
                }
            }
        }
        let (Some(w1), Some(w2), Some(w3)) = (&shapes[0], &shapes[1], &shapes[2]) else {
            continue;
        };
        let (&[i, h], &[h2, i2]) = (w1.as_slice(), w2.as_slice()) else {
            return Err(format!(
                "experts of layer `{prefix}` have w1 {w1:?}, w2 {w2:?}: expected 2-D matrices"
            ));
        };
        if w1 != w3 || h != h2 || i != i2 {
            return Err(format!(
                "experts of layer `{prefix}` have w1 {w1:?}, w2 {w2:?}, w3 {w3:?}; expected w1 = \
                 w3 = [intermediate, hidden] and w2 = [hidden, intermediate]"
            ));
        }
        for (fused, shape) in [
            (format!("{prefix}{GATE_UP}"), vec![n, 2 * i, h]),
            (format!("{prefix}{DOWN}"), vec![n, h, i]),
        ] {
            let parts = fused_parts(&fused, &shape)
                .unwrap_or_default()
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            view.tensors.insert(fused, (shape, parts));
        }
    }
    Ok(view)
}

/// Whether `names` hold per-expert Mixtral tensors.
pub(crate) fn has_per_expert(names: &[String]) -> bool {
    names
        .iter()
        .any(|n| layer_split(n).is_some_and(|(_, r)| r.starts_with(OLD_EXPERTS) || r == OLD_ROUTER))
}

/// Whether `names` hold fused Mixtral tensors.
pub(crate) fn has_fused(names: &[String]) -> bool {
    names
        .iter()
        .any(|n| layer_split(n).is_some_and(|(_, r)| r == GATE_UP || r == DOWN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_gate_up_interleave_w1_and_w3_per_expert() {
        let p = fused_parts("model.layers.3.mlp.experts.gate_up_proj", &[2, 8, 5]).unwrap();
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.layers.3.block_sparse_moe.experts.0.w1.weight",
                "model.layers.3.block_sparse_moe.experts.0.w3.weight",
                "model.layers.3.block_sparse_moe.experts.1.w1.weight",
                "model.layers.3.block_sparse_moe.experts.1.w3.weight",
            ]
        );
        assert!(p.iter().all(|(_, s)| s == &[4, 5]));
        let d = fused_parts("model.layers.0.mlp.experts.down_proj", &[2, 5, 4]).unwrap();
        assert_eq!(
            d[1].0,
            "model.layers.0.block_sparse_moe.experts.1.w2.weight"
        );
        assert_eq!(d[1].1, [5, 4]);
        assert!(fused_parts("model.layers.0.self_attn.q_proj.weight", &[4, 4]).is_none());
    }

    #[test]
    fn a_missing_expert_matrix_is_named() {
        let names = [
            "model.layers.0.block_sparse_moe.experts.0.w1.weight",
            "model.layers.0.block_sparse_moe.experts.0.w2.weight",
        ];
        let e = fused_view(names, |_| Some((vec![2, 2], "F32".into()))).unwrap_err();
        assert!(e.contains("experts.0.w3.weight` is missing"), "{e}");
    }
}

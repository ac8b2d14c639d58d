//! `model_stock`: interpolates between the base and the average of the fine-tuned models by a
//! ratio derived from the angle between their task vectors (Jang et al., Model Stock).

use rayon::prelude::*;

use super::blocks::{add_round, map2, map3, part, task_block, with_rounder, BLOCK};
use super::common::require_base;
use crate::numerics::round;
use crate::reduce::{norm2_blocks, outer_sum, sum_split_blocks_par, threads_for};
use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor, Value,
};

/// The model_stock method.
pub struct ModelStock {
    info: MethodInfo,
}

impl ModelStock {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        ModelStock {
            info: MethodInfo {
                name: "model_stock",
                pretty_name: "Model Stock",
                reference_url: Some("https://arxiv.org/abs/2403.19522"),
                summary: "In the input dtype: offsets oᵢ = wᵢ − w₀; c = mean over pairs of \
                          clamp(oᵢ·oⱼ / max(‖oᵢ‖‖oⱼ‖, 1e-6), −1, 1) (whole tensor, or per row with \
                          filter_wise); t = N·c / (1 + (N−1)·c), or 0 when the denominator is below \
                          1e-6; out = t·mean(wᵢ) + (1−t)·w₀.",
                params: vec![ParamSpec {
                    name: "filter_wise",
                    scope: ParamScope::Shared,
                    kind: ParamKind::Bool,
                    default: Some(Value::Bool(false)),
                    doc: "compute the ratio per row (output filter) instead of per tensor",
                }],
                contract: Contract::at_least(BaseRule::Required, 3),
                random: false,
                legacy: Legacy::NotImplemented,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "The mean over more than four model pairs uses a sequential f32 sum; \
                             PyTorch may interleave it (rare 1-ulp differences). \
                             --mergekit-version 0.0.4.2 is not supported yet.",
            },
        }
    }
}

impl Default for ModelStock {
    fn default() -> Self {
        Self::new()
    }
}

impl MergeMethod for ModelStock {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let filter_wise = args.shared_bool("filter_wise")?;
        let (base, ws) = args.split_base();
        let w0 = require_base(base, args.tensor_name)?;
        if ws.is_empty() {
            return Ok(w0.clone());
        }
        let dt = w0.dtype;
        let n = w0.data.len();
        let row_len = if filter_wise {
            w0.shape.last().copied().unwrap_or(n).max(1)
        } else {
            n.max(1)
        };
        let rows = n / row_len;
        let count = ws.len();
        let floor = round(dt, 1e-6);
        // The offsets are recomputed block by block from the inputs (see `blocks`), never stored.
        let offset_block = |i: usize, s: usize, out: &mut [f32]| {
            if let Some(w) = ws.get(i) {
                let len = out.len();
                task_block(dt, part(&w.data, s, len), Some(part(&w0.data, s, len)), out);
            }
        };
        // ‖oᵢ‖ per model and row.
        let norms: Vec<Vec<f32>> = (0..count)
            .into_par_iter()
            .map(|i| {
                (0..rows)
                    .map(|r| norm2_blocks(row_len, dt, |s, b| offset_block(i, r * row_len + s, b)))
                    .collect()
            })
            .collect();
        let norm = |i: usize, r: usize| norms.get(i).and_then(|v| v.get(r)).copied().unwrap_or(0.0);
        // cos per pair and row: `torch.stack(cos_thetas)` is a (pairs, rows) tensor. The pairs
        // are independent: they run in parallel.
        let pair_ids: Vec<(usize, usize)> = (0..count)
            .flat_map(|i| (i + 1..count).map(move |j| (i, j)))
            .collect();
        let cos: Vec<Vec<f32>> = pair_ids
            .par_iter()
            .map(|&(i, j)| {
                (0..rows)
                    .map(|r| {
                        let np = round(dt, norm(i, r) * norm(j, r));
                        let np = if np < floor { floor } else { np };
                        let dot = round(
                            dt,
                            sum_split_blocks_par(
                                row_len,
                                dt,
                                dt,
                                // Only a single row (the flattened tensor, or a 1-D one
                                // filter-wise) is a reduction to one value, which splits.
                                threads_for(rows, args.torch_threads),
                                |s, b| {
                                    let s = r * row_len + s;
                                    offset_block(i, s, b);
                                    // b = round(oᵢ · oⱼ), oⱼ computed in the same pass.
                                    if let Some(wj) = ws.get(j) {
                                        let len = b.len();
                                        let (x, y) = (part(&wj.data, s, len), part(&w0.data, s, len));
                                        with_rounder!(dt, r, map3(b, x, y, #[inline(always)] |o, v, w| r(o * r(v - w))));
                                    }
                                },
                            ),
                        );
                        let c = round(dt, dot / np);
                        if c.is_nan() {
                            c
                        } else {
                            c.clamp(-1.0, 1.0)
                        }
                    })
                    .collect()
            })
            .collect();
        let pairs = cos.len();
        let cm1 = (count as f32) - 1.0;
        let t: Vec<f32> = (0..rows)
            .map(|r| {
                // `.mean(dim=0)`: PyTorch's CPU mean sums 16-bit tensors in f32 (in the sum
                // kernel's order over the pair axis), divides in f32 and rounds once.
                let s = outer_sum(
                    |p| cos.get(p).and_then(|c| c.get(r)).copied().unwrap_or(0.0),
                    pairs,
                    r,
                    rows,
                    dt,
                );
                let cos = round(dt, s / pairs.max(1) as f32);
                let den = round(dt, 1.0 + round(dt, cm1 * cos));
                if round(dt, den.abs()) < floor {
                    0.0
                } else {
                    round(dt, round(dt, count as f32 * cos) / den)
                }
            })
            .collect();
        // Per row and block: Python's sum() (0 + w₁, then + w₂ ..., each rounded), / count, then
        // t·a + (1 − t)·b, every step rounded (in bulk, the same bits).
        let mut avg = vec![0f32; n];
        let cnt = count as f32;
        avg.par_chunks_mut(row_len)
            .zip(w0.data.par_chunks(row_len))
            .enumerate()
            .for_each(|(r, (ar, br))| {
                let tk = t.get(r).copied().unwrap_or(0.0);
                let one_minus = round(dt, 1.0 - tk);
                ar.par_chunks_mut(BLOCK)
                    .zip(br.par_chunks(BLOCK))
                    .enumerate()
                    .for_each(|(k, (a, b))| {
                        let s = r * row_len + k * BLOCK;
                        for w in &ws {
                            add_round(dt, a, part(&w.data, s, a.len()));
                        }
                        with_rounder!(
                            dt,
                            r,
                            map2(a, b, #[inline(always)] |av, bv| r(r(r(av / cnt) * tk) + r(bv * one_minus)))
                        );
                    });
            });
        let data = avg;
        Ok(Tensor::new(dt, w0.shape.clone(), data))
    }
}

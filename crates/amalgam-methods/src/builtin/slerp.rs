//! `slerp`: spherical linear interpolation between the base and one other model.

use amalgam_io::DType;

use super::blocks::part;
use crate::numerics::round_slice;
use crate::reduce::{norm2_fast, sum_split_blocks};
use crate::{
    BaseRule, Compat, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, ParamValues, StreamArgs, Tensor,
};

/// mergekit 0.1.5 bounds its f32 scratch by working on 1,048,576-element chunks; the norms and
/// the dot product are sums of per-chunk results, so the chunking changes the rounding and must be
/// reproduced.
const CHUNK: usize = 1024 * 1024;
/// Norms at or below this are replaced by 1 (no normalisation of near-zero tensors).
const EPS: f32 = 1e-8;
/// Above this |cos θ| the inputs are treated as colinear and interpolated linearly.
const DOT_THRESHOLD: f32 = 0.9995;

/// The slerp method.
pub struct Slerp {
    info: MethodInfo,
}

impl Slerp {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        Slerp {
            info: MethodInfo {
                name: "slerp",
                pretty_name: "SLERP",
                reference_url: Some("https://en.wikipedia.org/wiki/Slerp"),
                summary: "Spherical interpolation from the base (t=0) to the other model (t=1) over \
                          the whole flattened tensor, computed in f32: norms per 1,048,576-element \
                          chunk then the 2-norm of the chunk norms, dot of the normalised vectors \
                          clamped to [-1,1], linear interpolation when |dot| > 0.9995, result \
                          rounded once to the input dtype.",
                params: vec![ParamSpec {
                    name: "t",
                    scope: ParamScope::Shared,
                    kind: ParamKind::Float,
                    default: None,
                    doc: "interpolation factor: 0 = base model, 1 = the other model",
                }],
                contract: Contract::exactly(BaseRule::Required, 2),
                random: false,
                legacy: Legacy::NotImplemented,
                card_names_base: false,
                uniform_fallback: None,
                deviations: "float32 outputs: PyTorch takes acos and sin of float32 from Intel MKL \
                             (VML, high-accuracy mode) in its x86-64 Linux wheels and from SLEEF \
                             elsewhere; MKL's results are not correctly rounded, not published and \
                             change with MKL's instruction-set code path, so mergekit itself is not \
                             reproducible there. amalgam uses the platform libm, which picks the \
                             other neighbour in about 5 % of those calls; the two-term sum then \
                             cancels, so elements much smaller than the tensor's largest can differ \
                             by many ulps (the error stays within about 1 ulp of the tensor's \
                             largest magnitude). Everything else is bit-exact (tested by injecting \
                             PyTorch's acos/sin results). 16-bit outputs: rare 1-ulp differences \
                             for the same reason; the stated bound is 4 ulp of each tensor's \
                             largest magnitude (docs/threads.md: norms do not depend on PyTorch's \
                             thread count). --mergekit-version 0.0.4.2 (NumPy slerp) is not \
                             supported yet.",
            },
        }
    }
}

impl Default for Slerp {
    fn default() -> Self {
        Self::new()
    }
}

/// `torch.linalg.vector_norm` of a contiguous f32 row.
fn row_norm(x: &[f32]) -> f32 {
    norm2_fast(x, DType::F32)
}

/// 2-norm over a short list of partial norms (PyTorch's generic norm reduction: sequential,
/// `acc + x*x` contracted to a fused multiply-add).
fn norm_of_parts(parts: &[f32]) -> f32 {
    parts.iter().fold(0f32, |acc, &p| p.mul_add(p, acc)).sqrt()
}

/// mergekit 0.1.5's slerp of two same-length flat tensors, computed in f32 and rounded to `dtype`,
/// with the platform's f32 `acos`/`sin` (see [`slerp_015_with`] for why they cannot be PyTorch's).
pub(crate) fn slerp_015(t: f64, a: &[f32], b: &[f32], dtype: DType) -> Vec<f32> {
    slerp_015_with(t, a, b, dtype, f32::acos, f32::sin)
}

/// [`slerp_015`] with the two transcendental functions supplied by the caller.
///
/// Why they are parameters: PyTorch evaluates `acos`/`sin` of an f32 tensor with Intel MKL's VML
/// (`vmsAcos`/`vmsSin`, high-accuracy mode) in its x86-64 Linux wheels, and with SLEEF elsewhere.
/// MKL's results are not correctly rounded (acos up to ~0.8 ulp, sin ~0.6 ulp), its algorithm is
/// not published, and they even change with MKL's code path (AVX-512 vs AVX2 vs SSE4.2 differ on
/// some arguments). No implementation can reproduce them from first principles; every other step
/// is reproduced exactly, which the tests check by injecting PyTorch's recorded results here.
pub(crate) fn slerp_015_with(
    t: f64,
    a: &[f32],
    b: &[f32],
    dtype: DType,
    acos: impl Fn(f32) -> f32,
    sin: impl Fn(f32) -> f32,
) -> Vec<f32> {
    let n = a.len().min(b.len());
    if n == 0 {
        return Vec::new();
    }
    let chunks = chunks(n);
    let parts: Vec<(f32, f32)> = chunks
        .iter()
        .map(|&c| chunk_norms(at(a, c), at(b, c)))
        .collect();
    let (na, nb) = norms(&parts);
    let dots: Vec<f32> = chunks
        .iter()
        .map(|&c| chunk_dot(at(a, c), at(b, c), na, nb))
        .collect();
    let (ca, cb) = coefficients(t, &dots, acos, sin);
    combine(&a[..n], &b[..n], ca, cb, dtype)
}

/// Chunk `(start, end)` of a flat tensor.
fn at(x: &[f32], (s, e): (usize, usize)) -> &[f32] {
    part(x, s, e - s)
}

/// mergekit's chunks of a tensor of `n` elements: `(start, end)` of each.
fn chunks(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .step_by(CHUNK)
        .map(|s| (s, (s + CHUNK).min(n)))
        .collect()
}

/// The norms of one chunk of each input.
fn chunk_norms(a: &[f32], b: &[f32]) -> (f32, f32) {
    (row_norm(a), row_norm(b))
}

/// The two norms from the chunks' norms; one at or below [`EPS`] (or NaN:
/// `torch.where(norm > eps, norm, 1)` compares false) becomes 1.
fn norms(parts: &[(f32, f32)]) -> (f32, f32) {
    let guard = |v: f32| if v.is_nan() || v <= EPS { 1.0 } else { v };
    let na: Vec<f32> = parts.iter().map(|p| p.0).collect();
    let nb: Vec<f32> = parts.iter().map(|p| p.1).collect();
    (guard(norm_of_parts(&na)), guard(norm_of_parts(&nb)))
}

/// One chunk's share of the dot product of the normalised inputs.
fn chunk_dot(a: &[f32], b: &[f32], na: f32, nb: f32) -> f32 {
    sum_split_blocks(a.len(), DType::F32, DType::F32, 1, |k, buf| {
        let len = buf.len();
        for ((o, &x), &y) in buf.iter_mut().zip(part(a, k, len)).zip(part(b, k, len)) {
            *o = (x / na) * (y / nb);
        }
    })
}

/// The interpolation coefficients of the two inputs, from the chunks' dot products (summed in
/// chunk order, clamped to [-1, 1]; linear when nearly colinear).
fn coefficients(
    t: f64,
    dots: &[f32],
    acos: impl Fn(f32) -> f32,
    sin: impl Fn(f32) -> f32,
) -> (f32, f32) {
    let tt = t as f32;
    let one_minus_t = 1.0 - tt;
    let dot_sum = dots.iter().fold(0f32, |acc, &p| acc + p);
    let dot = if dot_sum.is_nan() {
        dot_sum
    } else {
        dot_sum.clamp(-1.0, 1.0)
    };
    let linear = dot.abs() > DOT_THRESHOLD;
    let theta = acos(if linear { 0.0 } else { dot });
    let sin_theta = sin(theta);
    if linear {
        (one_minus_t, tt)
    } else {
        (
            sin(one_minus_t * theta) / sin_theta,
            sin(tt * theta) / sin_theta,
        )
    }
}

/// `ca * a + cb * b`, rounded once to `dtype`.
fn combine(a: &[f32], b: &[f32], ca: f32, cb: f32, dtype: DType) -> Vec<f32> {
    let mut out: Vec<f32> = a.iter().zip(b).map(|(&x, &y)| ca * x + cb * y).collect();
    round_slice(dtype, &mut out);
    out
}

impl MergeMethod for Slerp {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let t = args.shared_f64("t")?;
        let (b, x) = args.base_and_other()?;
        let dtype = b.dtype;
        let out = slerp_015(t, &b.data, &x.data, dtype);
        Ok(Tensor::new(dtype, b.shape.clone(), out))
    }

    fn streams(&self, _shared: &ParamValues, _compat: Compat) -> bool {
        true
    }

    /// Three passes over mergekit's own chunks, each chunk's two inputs read afresh: the chunk
    /// norms, then the chunk dots (which need both norms), then the output; every chunk of a
    /// pass is independent, so chunks run in parallel and the results are combined in chunk
    /// order, as [`slerp_015`] does over whole tensors.
    fn merge_streamed(&self, args: StreamArgs<'_>) -> Result<(), MethodError> {
        use rayon::prelude::*;
        args.check(&self.info)?;
        let t = args.shared_f64("t")?;
        let (bi, xi) = match args.base {
            Some(0) => (0, 1),
            _ => (1, 0),
        };
        let chunks = chunks(args.numel());
        let read = |(s, e): (usize, usize)| -> Result<(Vec<f32>, Vec<f32>), MethodError> {
            Ok((args.io.read(bi, s..e)?, args.io.read(xi, s..e)?))
        };
        let parts: Vec<(f32, f32)> = chunks
            .par_iter()
            .map(|&c| read(c).map(|(b, x)| chunk_norms(&b, &x)))
            .collect::<Result<_, _>>()?;
        let (nb, nx) = norms(&parts);
        let dots: Vec<f32> = chunks
            .par_iter()
            .map(|&c| read(c).map(|(b, x)| chunk_dot(&b, &x, nb, nx)))
            .collect::<Result<_, _>>()?;
        let (cb, cx) = coefficients(t, &dots, f32::acos, f32::sin);
        chunks.par_iter().try_for_each(|&(s, e)| {
            let (b, x) = read((s, e))?;
            args.io.write(s..e, &combine(&b, &x, cb, cx, args.dtype))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amalgam_io::{convert, SafetensorsFile};
    use std::path::Path;

    fn tensor(f: &SafetensorsFile, name: &str) -> Vec<f32> {
        let r = f.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let mut data = vec![0f32; r.info.numel()];
        convert::decode_f32(r.info.dtype, r.data, &mut data).expect("decode");
        data
    }

    fn bits(hex: &str) -> u32 {
        u32::from_str_radix(hex, 16).expect("hex bits")
    }

    /// f32 slerp against mergekit with PyTorch's own acos/sin results injected (recorded by
    /// tests/fixtures/others.py, `slerp_trig_cases`): the injected functions only answer for
    /// the exact argument bits PyTorch saw, so the norms, dot, clamp and angle arguments must be
    /// bit-identical, and then the whole output must be too. With the platform libm instead, the
    /// seeds where MKL rounds differently give a different output (why f32 slerp is not
    /// reproducible, see `slerp_015_with`), and the seed where they agree gives the same.
    #[test]
    fn f32_slerp_is_exact_given_torch_transcendentals() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/others");
        for (seed, libm_agrees) in [(1, true), (7, false), (70, false), (72, false)] {
            let f = SafetensorsFile::open(dir.join(format!("slerp_trig_s{seed}.safetensors")))
                .expect("fixture");
            let meta = f.metadata().expect("metadata");
            let get = |k: &str| {
                meta.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_else(|| panic!("metadata {k}"))
                    .to_string()
            };
            let trig: Vec<(u32, u32)> = serde_json::from_str::<Vec<(String, String)>>(&get("trig"))
                .expect("trig")
                .iter()
                .map(|(a, v)| (bits(a), bits(v)))
                .collect();
            let t: serde_json::Value = serde_json::from_str(&get("shared")).expect("shared");
            let t = t["t"].as_f64().expect("t");
            let (a, b, want) = (tensor(&f, "in0"), tensor(&f, "in1"), tensor(&f, "out"));
            let lookup = |which: std::ops::Range<usize>, x: f32| -> f32 {
                trig.get(which.clone())
                    .and_then(|ts| ts.iter().find(|(arg, _)| *arg == x.to_bits()))
                    .map(|&(_, v)| f32::from_bits(v))
                    .unwrap_or_else(|| {
                        panic!(
                            "seed {seed}: argument {x:e} ({:#010x}) not among PyTorch's {:?}",
                            x.to_bits(),
                            trig.get(which)
                        )
                    })
            };
            let got = slerp_015_with(
                t,
                &a,
                &b,
                DType::F32,
                |x| lookup(0..1, x),
                |x| lookup(1..4, x),
            );
            let same = |g: &[f32]| g.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
            assert_eq!(got.len(), want.len());
            assert!(
                same(&got),
                "seed {seed}: output differs with PyTorch's acos/sin"
            );
            let plain = slerp_015(t, &a, &b, DType::F32);
            assert_eq!(
                same(&plain),
                libm_agrees,
                "seed {seed}: libm vs MKL premise"
            );
        }
    }
}

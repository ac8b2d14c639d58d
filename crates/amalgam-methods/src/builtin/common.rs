//! Small helpers shared by the methods in this folder (argument access, shape checks, messages).

use amalgam_io::DType;

use crate::numerics::round;
use crate::{MergeArgs, MethodError, ParamValues, Tensor};

/// The refusal for a method whose 2024 arithmetic is not implemented: computing 0.1.5 arithmetic
/// under the 0.0.4.2 flag would silently produce different bytes than the old mergekit.
pub(crate) fn compat_unsupported(method: &str) -> MethodError {
    MethodError::Other(format!(
        "{method} with --mergekit-version 0.0.4.2 is not supported yet"
    ))
}

/// The refusal for a method mergekit 0.0.4.2 did not have: under the 0.0.4.2 flag a config
/// naming it must fail as the old mergekit would, not merge with newer arithmetic.
pub(crate) fn not_in_0_0_4_2(method: &str) -> MethodError {
    MethodError::Other(format!("{method} is not available in mergekit 0.0.4.2"))
}

/// The base tensor of a method that cannot run without one (mergekit's message).
pub(crate) fn require_base(base: Option<&Tensor>) -> Result<&Tensor, MethodError> {
    base.ok_or_else(|| MethodError::Contract("Merge method requires a base input".into()))
}

/// The task vector `x − b`, rounded to `dtype` element by element as PyTorch's subtraction of
/// two `dtype` tensors is.
pub(crate) fn task_vector(x: &Tensor, b: &Tensor, dtype: DType) -> Vec<f32> {
    x.data
        .iter()
        .zip(&b.data)
        .map(|(&v, &w)| round(dtype, v - w))
        .collect()
}

/// A required shared float parameter.
pub(crate) fn shared_required(args: &MergeArgs<'_>, name: &str) -> Result<f64, MethodError> {
    args.shared_f64(name)
        .ok_or_else(|| MethodError::MissingParam {
            name: name.into(),
            target: args.tensor_name.into(),
        })
}

/// A shared float parameter with its declared default (used when the engine did not fill it).
pub(crate) fn shared_or(args: &MergeArgs<'_>, name: &str, default: f64) -> f64 {
    args.shared_f64(name).unwrap_or(default)
}

/// A per-input float parameter.
pub(crate) fn input_required(p: &ParamValues, name: &str, label: &str) -> Result<f64, MethodError> {
    p.get(name)
        .map(|v| v.as_f64())
        .ok_or_else(|| MethodError::MissingParam {
            name: name.into(),
            target: label.into(),
        })
}

/// Refuses a tensor whose data length is not the product of its shape. [`Tensor`]'s fields are
/// public, so a library caller can build one; indexing rows by the shape would then read past
/// the data or leave output elements unset.
pub(crate) fn check_well_formed(t: &Tensor, tensor_name: &str) -> Result<(), MethodError> {
    let want = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if want == Some(t.data.len()) {
        return Ok(());
    }
    Err(MethodError::Other(format!(
        "{tensor_name}: {} values do not fill shape {}",
        t.data.len(),
        shape_str(&t.shape)
    )))
}

/// A shape as Python prints a tuple: `(6,)`, `(2, 3)`, `()`.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    if dims.len() == 1 {
        format!("({},)", dims.join(", "))
    } else {
        format!("({})", dims.join(", "))
    }
}

/// Refuses inputs whose shapes differ, with mergekit's message shape list.
pub(crate) fn check_same_shape(args: &MergeArgs<'_>) -> Result<(), MethodError> {
    let first = match args.inputs.first() {
        Some(f) => f,
        None => {
            return Err(MethodError::Contract(format!(
                "{}: no inputs",
                args.tensor_name
            )))
        }
    };
    let bad = args.inputs.iter().any(|i| {
        i.tensor.shape != first.tensor.shape || i.tensor.data.len() != first.tensor.data.len()
    });
    if bad {
        let shapes: Vec<String> = args
            .inputs
            .iter()
            .map(|i| shape_str(&i.tensor.shape))
            .collect();
        return Err(MethodError::Shape {
            tensor: args.tensor_name.into(),
            shapes: format!("[{}]", shapes.join(", ")),
        });
    }
    check_well_formed(first.tensor, args.tensor_name)
}

/// The base tensor and the non-base tensors in input order (mergekit's `group.base` and
/// `group.non_base`).
pub(crate) fn split_base<'a>(args: &'a MergeArgs<'_>) -> (Option<&'a Tensor>, Vec<&'a Tensor>) {
    let base = args.base.and_then(|b| args.inputs.get(b)).map(|i| i.tensor);
    let others = args
        .inputs
        .iter()
        .enumerate()
        .filter(|(k, _)| Some(*k) != args.base)
        .map(|(_, i)| i.tensor)
        .collect();
    (base, others)
}

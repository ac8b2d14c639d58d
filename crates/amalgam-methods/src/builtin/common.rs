//! Building blocks of the built-in methods, public so that third-party methods use them instead
//! of re-implementing them: task vectors rounded as PyTorch rounds them, the base-input check,
//! shape checks with mergekit's messages.

use amalgam_io::DType;

use crate::numerics::round;
use amalgam_schema::{ContractViolation, Counted};

use crate::{MergeArgs, MethodError, Tensor};

/// The base tensor of a method that cannot run without one. `MergeArgs::check` has refused a
/// missing base already when the contract requires one; this keeps the method's own indexing
/// honest for a caller that skipped it.
pub fn require_base<'t>(
    base: Option<&'t Tensor>,
    tensor_name: &str,
) -> Result<&'t Tensor, MethodError> {
    base.ok_or_else(|| MethodError::Contract {
        tensor: tensor_name.to_string(),
        violation: ContractViolation::BaseRequired,
    })
}

/// The task vector `x − b`, rounded to `dtype` element by element as PyTorch's subtraction of
/// two `dtype` tensors is.
pub fn task_vector(x: &Tensor, b: &Tensor, dtype: DType) -> Vec<f32> {
    x.data
        .iter()
        .zip(&b.data)
        .map(|(&v, &w)| round(dtype, v - w))
        .collect()
}

/// Refuses a tensor whose data length is not the product of its shape. [`Tensor`]'s fields are
/// public, so a library caller can build one; indexing rows by the shape would then read past
/// the data or leave output elements unset.
pub fn check_well_formed(t: &Tensor, tensor_name: &str) -> Result<(), MethodError> {
    let want = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if want == Some(t.data.len()) {
        return Ok(());
    }
    Err(MethodError::Malformed {
        tensor: tensor_name.to_string(),
        len: t.data.len(),
        shape: shape_str(&t.shape),
    })
}

/// A shape as Python prints a tuple: `(6,)`, `(2, 3)`, `()`.
pub fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    if dims.len() == 1 {
        format!("({},)", dims.join(", "))
    } else {
        format!("({})", dims.join(", "))
    }
}

/// Refuses inputs whose shapes differ, with mergekit's message shape list.
pub fn check_same_shape(args: &MergeArgs<'_>) -> Result<(), MethodError> {
    let first = match args.inputs.first() {
        Some(f) => f,
        None => {
            return Err(MethodError::Contract {
                tensor: args.tensor_name.to_string(),
                violation: ContractViolation::Count {
                    what: Counted::Inputs,
                    min: 1,
                    max: None,
                    got: 0,
                },
            })
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

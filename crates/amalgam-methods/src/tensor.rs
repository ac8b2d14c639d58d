use amalgam_io::DType;

use crate::MethodError;

/// A floating-point tensor in a working dtype.
///
/// Values are stored as `f32` whatever `dtype` is: every F16 and BF16 value is exactly
/// representable in f32, so keeping them widened loses nothing, and rounding back to `dtype`
/// after each operation ([`crate::numerics::round`]) reproduces PyTorch's CPU arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The dtype the values are held in (F16, BF16 or F32).
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Values, each exactly representable in `dtype`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from parts; `data.len()` must equal the product of `shape`.
    ///
    /// Checked only in debug builds because methods build outputs in hot paths: the methods
    /// validate their inputs (a `MethodError`, never a panic, on inconsistent tensors), so a
    /// failure here is a bug in a method, which the test suite is meant to catch.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { dtype, shape, data }
    }

    /// A tensor from parts, refusing data that does not fill `shape` exactly: what a method
    /// (or a library caller) uses when the length is not guaranteed by construction.
    pub fn try_new(dtype: DType, shape: Vec<usize>, data: Vec<f32>) -> Result<Self, MethodError> {
        let want = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if want != Some(data.len()) {
            return Err(MethodError::Malformed {
                tensor: "(new tensor)".into(),
                len: data.len(),
                shape: crate::helpers::shape_str(&shape),
            });
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// Number of elements (the data length, which is what indexing is bounded by).
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

use std::ops::Range;

use amalgam_io::DType;
use amalgam_schema::{param, Compat, ContractViolation, MethodInfo, ParamScope, ParamValues};

use crate::{rng::Mt19937, MethodError, Tensor};

/// One input of a merge.
#[derive(Debug)]
pub struct MergeInput<'a> {
    /// The tensor, already in the working dtype.
    pub tensor: &'a Tensor,
    /// Per-input parameters resolved for this input (Input/NonBase scopes).
    pub params: &'a ParamValues,
    /// A label for messages: `model.tensor`.
    pub label: &'a str,
}

/// Everything a method gets to merge one tensor.
pub struct MergeArgs<'a> {
    /// Output tensor name (for messages and name-dependent behaviour).
    pub tensor_name: &'a str,
    /// Inputs in mergekit's order: slice-source (config) order, an auto-added base last.
    pub inputs: Vec<MergeInput<'a>>,
    /// Index of the base model in `inputs`, if any.
    pub base: Option<usize>,
    /// Shared parameters resolved for this tensor.
    pub shared: &'a ParamValues,
    /// The random stream (MT19937 as PyTorch's CPU generator), for random methods.
    pub rng: Option<&'a mut Mt19937>,
    /// Which mergekit arithmetic to reproduce.
    pub compat: Compat,
    /// PyTorch intra-op threads mergekit ran with (`torch.get_num_threads()`, 1 = the default).
    /// A reduction to one value over 32,768 or more elements splits per thread in PyTorch, which
    /// changes its last bits, so methods pass this to `reduce` (docs/threads.md).
    pub torch_threads: usize,
}

/// One input of a float64 merge ([`MergeMethod::merge_f64`]): the values in f64.
#[derive(Debug)]
pub struct MergeInput64<'a> {
    /// The values (row-major), already in f64.
    pub data: &'a [f64],
    /// Per-input parameters resolved for this input (Input/NonBase scopes).
    pub params: &'a ParamValues,
    /// A label for messages: `model.tensor`.
    pub label: &'a str,
}

impl MergeInput64<'_> {
    /// Per-input float parameter (an error if missing, never a default).
    pub fn f64(&self, name: &str) -> Result<f64, MethodError> {
        Ok(param(self.params, name, self.label)?.as_f64())
    }
}

/// Everything a method gets to merge one tensor in float64 arithmetic: mergekit 0.1.5 computes
/// in f64 when the working dtype is float64 (`dtype: float64`, or float64 inputs), which the f32
/// [`Tensor`] cannot hold, so those merges take this separate, f64-valued entry point.
pub struct MergeArgs64<'a> {
    /// Output tensor name (for messages).
    pub tensor_name: &'a str,
    /// Inputs in mergekit's order (see [`MergeArgs::inputs`]).
    pub inputs: Vec<MergeInput64<'a>>,
    /// Index of the base model in `inputs`, if any.
    pub base: Option<usize>,
    /// Shared parameters resolved for this tensor.
    pub shared: &'a ParamValues,
    /// Which mergekit arithmetic to reproduce.
    pub compat: Compat,
}

impl MergeArgs64<'_> {
    /// Shared parameter `name` (an error if missing, never a default).
    pub fn param(&self, name: &str) -> Result<amalgam_schema::Value, MethodError> {
        Ok(param(self.shared, name, self.tensor_name)?)
    }
}

impl MergeInput<'_> {
    /// Per-input parameter `name` (resolved by the planner, defaults included): an error if it
    /// is missing, never a default.
    pub fn param(&self, name: &str) -> Result<amalgam_schema::Value, MethodError> {
        Ok(param(self.params, name, self.label)?)
    }

    /// Per-input float parameter.
    pub fn f64(&self, name: &str) -> Result<f64, MethodError> {
        self.param(name).map(|v| v.as_f64())
    }
}

impl<'a> MergeArgs<'a> {
    /// Shared parameter `name` (resolved by the planner, defaults included): an error if it is
    /// missing, never a default, so a method called directly with incomplete values refuses
    /// instead of computing something the config did not ask for.
    pub fn param(&self, name: &str) -> Result<amalgam_schema::Value, MethodError> {
        Ok(param(self.shared, name, self.tensor_name)?)
    }

    /// Shared float parameter.
    pub fn shared_f64(&self, name: &str) -> Result<f64, MethodError> {
        self.param(name).map(|v| v.as_f64())
    }

    /// Shared boolean parameter.
    pub fn shared_bool(&self, name: &str) -> Result<bool, MethodError> {
        self.param(name).map(|v| v.as_bool())
    }

    /// The working dtype (the inputs' common dtype; the engine casts every input to it before
    /// merging, so the first input's dtype is everyone's). F32 when there are no inputs, so a
    /// method can still build its refusal without a special case.
    pub fn dtype(&self) -> DType {
        self.inputs
            .first()
            .map(|i| i.tensor.dtype)
            .unwrap_or(DType::F32)
    }

    /// A contract violation on this tensor, as an error.
    pub fn contract_error(&self, violation: ContractViolation) -> MethodError {
        MethodError::Contract {
            tensor: self.tensor_name.to_string(),
            violation,
        }
    }

    /// The first input (every contract asks for at least one; `check` has refused none).
    pub fn first(&self) -> Result<&MergeInput<'a>, MethodError> {
        self.inputs.first().ok_or_else(|| MethodError::Contract {
            tensor: self.tensor_name.to_string(),
            violation: ContractViolation::Count {
                what: amalgam_schema::Counted::Inputs,
                min: 1,
                max: None,
                got: 0,
            },
        })
    }

    /// The base input's tensor and the other inputs' tensors in input order (mergekit's
    /// `group.base` and `group.non_base`).
    pub fn split_base(&self) -> (Option<&Tensor>, Vec<&Tensor>) {
        let base = self.base.and_then(|b| self.inputs.get(b)).map(|i| i.tensor);
        let others = self
            .inputs
            .iter()
            .enumerate()
            .filter(|(k, _)| Some(*k) != self.base)
            .map(|(_, i)| i.tensor)
            .collect();
        (base, others)
    }

    /// The base and the one other input of a two-model method (slerp, nearswap, arcee_fusion),
    /// or the contract violation that prevents it.
    pub fn base_and_other(&self) -> Result<(&Tensor, &Tensor), MethodError> {
        let (base, others) = self.split_base();
        let violation = match (base, others.as_slice()) {
            (Some(b), [x]) => return Ok((b, x)),
            (None, _) => ContractViolation::BaseRequired,
            (Some(_), xs) => ContractViolation::Count {
                what: amalgam_schema::Counted::NonBase,
                min: 1,
                max: Some(1),
                got: xs.len(),
            },
        };
        Err(MethodError::Contract {
            tensor: self.tensor_name.to_string(),
            violation,
        })
    }

    /// Checks these arguments against the method's schema, so a method body can rely on them:
    /// the input contract ([`amalgam_schema::Contract::check`], the same check config
    /// validation runs on each slice), every declared parameter present where it binds and no
    /// undeclared one, every input well formed and of one shape. The engine's plans always
    /// pass; a direct caller with incomplete arguments gets an error, never output.
    pub fn check(&self, info: &MethodInfo) -> Result<(), MethodError> {
        check_params(
            info,
            self.tensor_name,
            self.shared,
            self.inputs.iter().map(|i| (i.params, i.label)),
            self.base,
            self.compat,
        )?;
        crate::builtin::common::check_same_shape(self)
    }
}

/// The input contract and the parameters of one tensor's merge, checked against the method's
/// schema: the part of [`MergeArgs::check`] that needs no tensor data, shared with
/// [`StreamArgs::check`].
fn check_params<'p>(
    info: &MethodInfo,
    tensor_name: &str,
    shared: &ParamValues,
    inputs: impl ExactSizeIterator<Item = (&'p ParamValues, &'p str)>,
    base: Option<usize>,
    compat: Compat,
) -> Result<(), MethodError> {
    let inputs: Vec<_> = inputs.collect();
    let ids: Vec<usize> = (0..inputs.len()).collect();
    info.contract
        .check(&ids, base.as_ref())
        .map_err(|v: ContractViolation| MethodError::Contract {
            tensor: tensor_name.to_string(),
            violation: v,
        })?;
    let undeclared = |values: &ParamValues, target: &str| -> Result<(), MethodError> {
        match values.keys().find(|k| info.param(k).is_none()) {
            Some(k) => Err(MethodError::UndeclaredParam {
                method: info.name.to_string(),
                name: k.clone(),
                target: target.to_string(),
            }),
            None => Ok(()),
        }
    };
    undeclared(shared, tensor_name)?;
    for p in info.params.iter().filter(|p| p.scope == ParamScope::Shared) {
        param(shared, p.name, tensor_name)?;
    }
    for (j, (params, label)) in inputs.iter().enumerate() {
        undeclared(params, label)?;
        let is_base = base == Some(j);
        for p in info.params.iter() {
            if MethodInfo::binds(p, is_base, compat) {
                param(params, p.name, label)?;
            }
        }
    }
    Ok(())
}

/// Chunked access to one tensor's inputs and output, given by the engine to
/// [`MergeMethod::merge_streamed`]: the method reads the ranges it needs, as often as its passes
/// need them, instead of receiving every input whole, so the memory of a whole-tensor merge is
/// bounded by its chunks rather than by the tensor times the inputs.
pub trait ChunkIo: Sync {
    /// Elements `range` (row-major) of input `input`, in the working dtype.
    fn read(&self, input: usize, range: Range<usize>) -> Result<Vec<f32>, MethodError>;
    /// The merged values of elements `range` (in the working dtype; the engine encodes them to
    /// the output dtype). Every element must be written exactly once, in any order.
    fn write(&self, range: Range<usize>, values: &[f32]) -> Result<(), MethodError>;
}

/// Everything a method gets to merge one tensor in chunks ([`MergeMethod::merge_streamed`]):
/// [`MergeArgs`] with the tensors replaced by [`ChunkIo`].
pub struct StreamArgs<'a> {
    /// Output tensor name (for messages).
    pub tensor_name: &'a str,
    /// The shape every input has (checked by the planner) and the output takes.
    pub shape: &'a [usize],
    /// The working dtype.
    pub dtype: DType,
    /// Per-input parameters, in input order (see [`MergeArgs::inputs`]).
    pub params: Vec<&'a ParamValues>,
    /// Per-input labels for messages, `model.tensor`.
    pub labels: Vec<&'a str>,
    /// Index of the base model among the inputs, if any.
    pub base: Option<usize>,
    /// Shared parameters resolved for this tensor.
    pub shared: &'a ParamValues,
    /// Which mergekit arithmetic to reproduce.
    pub compat: Compat,
    /// PyTorch intra-op threads mergekit ran with (see [`MergeArgs::torch_threads`]).
    pub torch_threads: usize,
    /// The inputs and the output, in chunks.
    pub io: &'a dyn ChunkIo,
}

impl StreamArgs<'_> {
    /// Elements in the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Shared float parameter (an error if missing, never a default).
    pub fn shared_f64(&self, name: &str) -> Result<f64, MethodError> {
        Ok(param(self.shared, name, self.tensor_name)?.as_f64())
    }

    /// The contract and parameters, as [`MergeArgs::check`] checks them (the shapes are the
    /// engine's, one for every input).
    pub fn check(&self, info: &MethodInfo) -> Result<(), MethodError> {
        check_params(
            info,
            self.tensor_name,
            self.shared,
            self.params.iter().copied().zip(self.labels.iter().copied()),
            self.base,
            self.compat,
        )
    }
}

/// A merge method. Implementations must be deterministic given their inputs and RNG stream:
/// output bytes never depend on thread count.
pub trait MergeMethod: Send + Sync {
    /// Declared name, parameters and contract.
    fn info(&self) -> &MethodInfo;

    /// Whether, for these shared parameters, every output element depends only on the input
    /// elements at the same position. The engine then merges large tensors in parallel chunks
    /// (passing 1-D slices) instead of whole, which bounds memory. Default: no.
    fn is_elementwise(&self, shared: &ParamValues, per_input: &[&ParamValues]) -> bool {
        let _ = (shared, per_input);
        false
    }

    /// The dtype of the merged tensor for inputs of working dtype `work` (before `out_dtype`).
    /// Almost always `work`; arcee_fusion returns float32 (a mergekit quirk amalgam reproduces).
    /// The engine needs it at planning time to lay out shard headers before computing anything.
    fn output_dtype(&self, work: DType) -> DType {
        work
    }

    /// Merges one tensor.
    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError>;

    /// Whether [`MergeMethod::merge_streamed`] is implemented for these shared parameters and
    /// `compat`. The engine then merges a tensor whose inputs would take too much memory whole
    /// (`exec::STREAM_ITEM_BYTES`) in chunks, for the same bits. Default: no.
    fn streams(&self, shared: &ParamValues, compat: Compat) -> bool {
        let _ = (shared, compat);
        false
    }

    /// Merges one tensor through [`ChunkIo`]: a whole-tensor method whose dependence on the
    /// whole tensor is a few reductions computes them in passes over chunks (in exactly the
    /// order [`MergeMethod::merge`] does), then writes the output chunk by chunk. Called only
    /// when [`MergeMethod::streams`] is true; the default refuses.
    fn merge_streamed(&self, args: StreamArgs<'_>) -> Result<(), MethodError> {
        Err(MethodError::Other(format!(
            "{}: merge_method {} cannot merge in chunks",
            args.tensor_name,
            self.info().name
        )))
    }

    /// Whether [`MergeMethod::merge_f64`] is implemented for `compat` and a tensor of `inputs`
    /// inputs (the base included). The planner refuses a float64 working dtype where it is not
    /// ("not supported yet"), before any output is written. Default: no.
    fn supports_f64(&self, compat: Compat, inputs: usize) -> bool {
        let _ = (compat, inputs);
        false
    }

    /// Merges one tensor in float64 arithmetic, returning the values (row-major) in f64.
    /// Called only when [`MergeMethod::supports_f64`] is true; the default refuses.
    fn merge_f64(&self, args: MergeArgs64<'_>) -> Result<Vec<f64>, MethodError> {
        let _ = args;
        Err(MethodError::Float64Unsupported {
            method: self.info().name.to_string(),
        })
    }
}

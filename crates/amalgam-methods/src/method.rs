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
        let ids: Vec<usize> = (0..self.inputs.len()).collect();
        info.contract
            .check(&ids, self.base.as_ref())
            .map_err(|v: ContractViolation| MethodError::Contract {
                tensor: self.tensor_name.to_string(),
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
        undeclared(self.shared, self.tensor_name)?;
        for p in info.params.iter().filter(|p| p.scope == ParamScope::Shared) {
            self.param(p.name)?;
        }
        for (j, input) in self.inputs.iter().enumerate() {
            undeclared(input.params, input.label)?;
            let is_base = self.base == Some(j);
            for p in info.params.iter() {
                if MethodInfo::binds(p, is_base, self.compat) {
                    input.param(p.name)?;
                }
            }
        }
        crate::builtin::common::check_same_shape(self)
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

use std::collections::BTreeMap;

use amalgam_io::DType;

use crate::{rng::Mt19937, MethodError, Tensor};

/// Which mergekit release's arithmetic to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// mergekit 0.1.5 (PyPI): the default.
    #[default]
    V0_1_5,
    /// mergekit 0.0.4.2 (April 2024), which made the Unmixtraled models.
    V0_0_4_2,
}

impl Compat {
    /// Parses `0.1.5` / `0.0.4.2`.
    pub fn parse(s: &str) -> Option<Compat> {
        match s {
            "0.1.5" => Some(Compat::V0_1_5),
            "0.0.4.2" => Some(Compat::V0_0_4_2),
            _ => None,
        }
    }

    /// The version string written into index metadata.
    pub fn version_str(self) -> &'static str {
        match self {
            Compat::V0_1_5 => "0.1.5",
            Compat::V0_0_4_2 => "0.0.4.2",
        }
    }
}

/// Where a parameter is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamScope {
    /// One value per tensor (e.g. slerp's `t`).
    Shared,
    /// One value per input, the base included (linear's `weight`).
    Input,
    /// One value per non-base input; the base is exempt (task arithmetic's `weight`).
    NonBase,
}

/// A parameter's type, used to coerce YAML scalars as mergekit's pydantic validation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A float (`"0.5"` and `1` are accepted).
    Float,
    /// A boolean.
    Bool,
    /// An integer.
    Int,
}

/// A resolved parameter value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Float value.
    Float(f64),
    /// Boolean value.
    Bool(bool),
    /// Integer value.
    Int(i64),
}

impl Value {
    /// As a float (booleans are 0/1, as in Python).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Float(f) => f,
            Value::Int(i) => i as f64,
            Value::Bool(b) => b as u8 as f64,
        }
    }

    /// As a boolean (Python truthiness).
    pub fn as_bool(self) -> bool {
        match self {
            Value::Bool(b) => b,
            Value::Float(f) => f != 0.0,
            Value::Int(i) => i != 0,
        }
    }
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Name as written in YAML.
    pub name: &'static str,
    /// Where it is given.
    pub scope: ParamScope,
    /// Its type.
    pub kind: ParamKind,
    /// Default; `None` means required.
    pub default: Option<Value>,
    /// One line for `amalgam methods` and docs/methods.md.
    pub doc: &'static str,
}

/// Whether the method needs, accepts or ignores a base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseRule {
    /// A base is required.
    Required,
    /// A base may be given.
    Optional,
    /// A base must not be given.
    Forbidden,
    /// A base has no role; if given it is an ordinary input (linear).
    Ignored,
}

/// How many inputs a method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputCount {
    /// Any number (at least one).
    Any,
    /// Exactly n inputs, base included.
    Exactly(usize),
    /// At least n inputs, base included.
    AtLeast(usize),
    /// Exactly n non-base inputs.
    ExactlyNonBase(usize),
    /// At least n non-base inputs.
    AtLeastNonBase(usize),
}

/// A method's input contract, checked at planning time with mergekit's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    /// Base model rule.
    pub base: BaseRule,
    /// Input count rule.
    pub count: InputCount,
}

/// Everything known about a method without running it.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// Registry name (`linear`).
    pub name: &'static str,
    /// Name used in model cards (`Linear`).
    pub pretty_name: &'static str,
    /// Paper or reference URL for the model card, if any.
    pub reference_url: Option<&'static str>,
    /// Formula / behaviour, one paragraph (for docs/methods.md).
    pub summary: &'static str,
    /// Declared parameters.
    pub params: Vec<ParamSpec>,
    /// Input contract.
    pub contract: Contract,
    /// Whether the method draws random numbers (needs `--random-seed` to reproduce).
    pub random: bool,
    /// Known deviations from mergekit, if any (for docs/methods.md).
    pub deviations: &'static str,
}

/// Resolved parameter values by name (a missing key or `None` means "not given").
pub type ParamValues = BTreeMap<String, Value>;

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
}

impl<'a> MergeArgs<'a> {
    /// Shared float parameter (declared defaults are filled in by the engine).
    pub fn shared_f64(&self, name: &str) -> Option<f64> {
        self.shared.get(name).map(|v| v.as_f64())
    }

    /// Shared boolean parameter.
    pub fn shared_bool(&self, name: &str) -> Option<bool> {
        self.shared.get(name).map(|v| v.as_bool())
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
}

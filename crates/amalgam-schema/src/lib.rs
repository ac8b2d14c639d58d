//! What amalgam knows about a merge method without running it.
//!
//! A method's schema ([`MethodInfo`]) is data, written once by the method and read by everyone
//! else: the config crate validates parameters and the input contract against it, the engine's
//! planner resolves parameters (filling declared defaults) and refuses methods a
//! `--mergekit-version` lacks, `amalgam methods` and docs/methods.md list it, and the model card
//! takes its name and reference from it. This crate sits at the bottom of the dependency graph
//! (it depends on nothing of amalgam's) so that config, methods and engine can all read the same
//! types instead of translating between copies of them.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

/// Which mergekit release's arithmetic and file layout to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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

    /// The version string (`0.1.5`), as written into index metadata and messages.
    pub fn version_str(self) -> &'static str {
        match self {
            Compat::V0_1_5 => "0.1.5",
            Compat::V0_0_4_2 => "0.0.4.2",
        }
    }
}

impl fmt::Display for Compat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.version_str())
    }
}

/// Along which inputs a parameter is bound (mergekit 0.1.5's `ParameterScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamScope {
    /// One value per tensor, resolved with the output tensor name (slerp's `t`).
    Shared,
    /// One value per input, the base included (linear's `weight`).
    Input,
    /// One value per non-base input; the base is exempt (task arithmetic's `weight`).
    NonBase,
}

impl fmt::Display for ParamScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamScope::Shared => "shared",
            ParamScope::Input => "input",
            ParamScope::NonBase => "nonbase",
        })
    }
}

/// A parameter's declared type, which decides how config values are coerced (pydantic's lax
/// mode, as mergekit 0.1.5 validates every value with the parameter's type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `float` (also mergekit's `Optional[float]`: a config cannot give `null`).
    Float,
    /// `bool`.
    Bool,
    /// `int`.
    Int,
}

impl ParamKind {
    /// The short name (`float`, `bool`, `int`) used in listings.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Float => "float",
            ParamKind::Bool => "bool",
            ParamKind::Int => "int",
        }
    }
}

impl fmt::Display for ParamKind {
    /// As messages say it: "expected a number".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamKind::Float => "a number",
            ParamKind::Bool => "a boolean",
            ParamKind::Int => "an integer",
        })
    }
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

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Float(x) => write!(f, "{x}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Resolved parameter values by name. Built by the planner from the config and the schema's
/// defaults, so a method finds every declared parameter here; a missing one is an error in the
/// method ([`MissingParam`]), never a default.
pub type ParamValues = BTreeMap<String, Value>;

/// A declared parameter that has no value where a method looked for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing required parameter `{name}` for {target}")]
pub struct MissingParam {
    /// Parameter name.
    pub name: String,
    /// The tensor (shared parameters) or `model.tensor` (per-input ones) it was needed for.
    pub target: String,
}

/// Looks up `name` in resolved values: the only way a method reads a parameter.
pub fn param(values: &ParamValues, name: &str, target: &str) -> Result<Value, MissingParam> {
    values.get(name).copied().ok_or_else(|| MissingParam {
        name: name.to_string(),
        target: target.to_string(),
    })
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
    /// Default; `None` means required (mergekit: "Missing required parameter").
    pub default: Option<Value>,
    /// One line for `amalgam methods` and docs/methods.md.
    pub doc: &'static str,
}

impl ParamSpec {
    /// A parameter with a default.
    pub const fn optional(
        name: &'static str,
        scope: ParamScope,
        kind: ParamKind,
        default: Value,
        doc: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            scope,
            kind,
            default: Some(default),
            doc,
        }
    }

    /// A parameter every config must give.
    pub const fn required(
        name: &'static str,
        scope: ParamScope,
        kind: ParamKind,
        doc: &'static str,
    ) -> Self {
        ParamSpec {
            name,
            scope,
            kind,
            default: None,
            doc,
        }
    }

    /// Whether a config must give it.
    pub fn is_required(&self) -> bool {
        self.default.is_none()
    }
}

/// How a method treats the base model (mergekit 0.1.5's `BasePolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BaseRule {
    /// A base is required, among the inputs.
    Required,
    /// A base may be given.
    Optional,
    /// A base must not be given.
    Forbidden,
    /// `base_model` is not looked at: if given, it is an ordinary input (linear).
    Ignored,
}

/// What inputs each output slice must have (mergekit 0.1.5's `InputContract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contract {
    /// Base model rule.
    pub base: BaseRule,
    /// Fewest inputs (base included).
    pub min_inputs: usize,
    /// Most inputs (base included).
    pub max_inputs: Option<usize>,
    /// Fewest non-base inputs.
    pub min_non_base: Option<usize>,
    /// Most non-base inputs.
    pub max_non_base: Option<usize>,
}

impl Contract {
    /// Any number of inputs (at least one).
    pub const fn any(base: BaseRule) -> Self {
        Contract {
            base,
            min_inputs: 1,
            max_inputs: None,
            min_non_base: None,
            max_non_base: None,
        }
    }

    /// Exactly `n` inputs, base included.
    pub const fn exactly(base: BaseRule, n: usize) -> Self {
        Contract {
            base,
            min_inputs: n,
            max_inputs: Some(n),
            min_non_base: None,
            max_non_base: None,
        }
    }

    /// At least `n` inputs, base included.
    pub const fn at_least(base: BaseRule, n: usize) -> Self {
        Contract {
            base,
            min_inputs: n,
            max_inputs: None,
            min_non_base: None,
            max_non_base: None,
        }
    }

    /// Exactly `n` non-base inputs.
    pub const fn exactly_non_base(base: BaseRule, n: usize) -> Self {
        Contract {
            base,
            min_inputs: 1,
            max_inputs: None,
            min_non_base: Some(n),
            max_non_base: Some(n),
        }
    }

    /// At least `n` non-base inputs.
    pub const fn at_least_non_base(base: BaseRule, n: usize) -> Self {
        Contract {
            base,
            min_inputs: 1,
            max_inputs: None,
            min_non_base: Some(n),
            max_non_base: None,
        }
    }

    /// mergekit 0.1.5's `InputContract.validate_ids`: `ids` are the slice's inputs in order,
    /// `base` the slice's base model (whether or not it is among them). The one implementation
    /// of the contract: config validation calls it on each output slice, and a method calls it
    /// (through `MergeArgs::check`) on the inputs it is given.
    pub fn check<T: PartialEq>(
        &self,
        ids: &[T],
        base: Option<&T>,
    ) -> Result<(), ContractViolation> {
        for (i, m) in ids.iter().enumerate() {
            if ids.iter().take(i).any(|o| o == m) {
                return Err(ContractViolation::Duplicate { index: i });
            }
        }
        let base = if self.base == BaseRule::Ignored {
            None
        } else {
            base
        };
        let has_base = base.is_some_and(|b| ids.contains(b));
        if base.is_some() && !has_base {
            return Err(ContractViolation::BaseNotPresent);
        }
        if self.base == BaseRule::Required && !has_base {
            return Err(ContractViolation::BaseRequired);
        }
        if self.base == BaseRule::Forbidden && has_base {
            return Err(ContractViolation::BaseForbidden);
        }
        let count = ids.len();
        count_check(Counted::Inputs, count, self.min_inputs, self.max_inputs)?;
        if self.min_non_base.is_some() || self.max_non_base.is_some() {
            count_check(
                Counted::NonBase,
                count - usize::from(has_base),
                self.min_non_base.unwrap_or(0),
                self.max_non_base,
            )?;
        }
        Ok(())
    }
}

fn count_check(
    what: Counted,
    got: usize,
    min: usize,
    max: Option<usize>,
) -> Result<(), ContractViolation> {
    if got < min || max.is_some_and(|m| got > m) {
        return Err(ContractViolation::Count {
            what,
            min,
            max,
            got,
        });
    }
    Ok(())
}

/// What a count rule of a [`Contract`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// All inputs, base included.
    Inputs,
    /// Inputs other than the base.
    NonBase,
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Counted::Inputs => "inputs",
            Counted::NonBase => "non-base inputs",
        })
    }
}

/// How a set of inputs breaks a method's [`Contract`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContractViolation {
    /// Input `index` repeats an earlier one.
    Duplicate {
        /// Position of the repeat.
        index: usize,
    },
    /// A base is named but is not among the inputs.
    BaseNotPresent,
    /// The method needs a base and has none.
    BaseRequired,
    /// The method takes no base and has one.
    BaseForbidden,
    /// Too few or too many inputs.
    Count {
        /// What was counted.
        what: Counted,
        /// The fewest allowed.
        min: usize,
        /// The most allowed.
        max: Option<usize>,
        /// How many there are.
        got: usize,
    },
}

impl ContractViolation {
    /// mergekit 0.1.5's own message for output slice `group` (`default.slices[0]`).
    pub fn mergekit_message(&self, group: &str) -> String {
        match self {
            ContractViolation::Duplicate { .. } => format!("Duplicate merge inputs for {group}"),
            ContractViolation::BaseNotPresent => {
                format!("Base input is not present in merge inputs for {group}")
            }
            ContractViolation::BaseRequired => {
                format!("Merge method requires a base input for {group}")
            }
            ContractViolation::BaseForbidden => {
                format!("Merge method does not accept a base input for {group}")
            }
            ContractViolation::Count {
                what,
                min,
                max,
                got,
            } => {
                if got < min {
                    format!("Merge method requires at least {min} {what} for {group}; got {got}")
                } else {
                    let expect = match max {
                        Some(m) if m == min => format!("exactly {min}"),
                        Some(m) => format!("at most {m}"),
                        None => format!("at least {min}"),
                    };
                    format!("Merge method requires {expect} {what} for {group}; got {got}")
                }
            }
        }
    }
}

impl fmt::Display for ContractViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.mergekit_message("this merge"))
    }
}

impl std::error::Error for ContractViolation {}

/// Where a method stands under `--mergekit-version 0.0.4.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Legacy {
    /// mergekit 0.0.4.2 had it and amalgam reproduces its arithmetic.
    Implemented,
    /// mergekit 0.0.4.2 had it, but amalgam does not reproduce that arithmetic yet: computing
    /// 0.1.5's instead would silently give different bytes than the old mergekit.
    NotImplemented,
    /// mergekit 0.0.4.2 did not have it (it stops with "Unimplemented merge method").
    Absent,
}

/// Why a method cannot run under a `--mergekit-version`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The version has the method; amalgam lacks its arithmetic.
    #[error("{method} with --mergekit-version {version} is not supported yet")]
    NotImplemented {
        /// Method name.
        method: String,
        /// The requested version.
        version: Compat,
    },
    /// The version did not have the method.
    #[error(
        "{method} is not available in mergekit {version} (it stops with \"Unimplemented merge \
         method {method}\"); use --mergekit-version 0.1.5"
    )]
    Absent {
        /// Method name.
        method: String,
        /// The requested version.
        version: Compat,
    },
}

/// Everything known about a method without running it.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// Registry name (`merge_method: linear`).
    pub name: &'static str,
    /// Name used in model cards (`Linear`).
    pub pretty_name: &'static str,
    /// Paper or reference URL for the model card, if any.
    pub reference_url: Option<&'static str>,
    /// Formula / behaviour, one paragraph (for docs/methods.md).
    pub summary: &'static str,
    /// Declared parameters.
    pub params: Vec<ParamSpec>,
    /// Input contract, checked before any model is opened.
    pub contract: Contract,
    /// Whether the method draws random numbers (needs `--random-seed` to reproduce).
    pub random: bool,
    /// Known deviations from mergekit, if any (for docs/methods.md).
    pub deviations: &'static str,
    /// Where it stands under `--mergekit-version 0.0.4.2`.
    pub legacy: Legacy,
    /// Whether the model card says "using X as a base" (mergekit's slerp card does not).
    pub card_names_base: bool,
    /// A required per-input parameter that amalgam fills with 1/N when no scope of the config
    /// mentions it (linear's `weight`; mergekit refuses such a config, amalgam warns and
    /// `--strict` restores the error).
    pub uniform_fallback: Option<&'static str>,
}

impl MethodInfo {
    /// A schema with the usual settings: no parameters, no randomness, no deviations, the same
    /// arithmetic under both versions, the base named in the card. Built-in methods start from
    /// it and set what differs, so a new field does not touch every method.
    pub fn new(name: &'static str, pretty_name: &'static str, contract: Contract) -> Self {
        MethodInfo {
            name,
            pretty_name,
            reference_url: None,
            summary: "",
            params: Vec::new(),
            contract,
            random: false,
            deviations: "none",
            legacy: Legacy::Implemented,
            card_names_base: true,
            uniform_fallback: None,
        }
    }

    /// The declared parameter `name`.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Refuses a version that lacks the method (or whose arithmetic amalgam lacks). Checked at
    /// planning, before any model file is read.
    pub fn check_version(&self, compat: Compat) -> Result<(), VersionError> {
        if compat != Compat::V0_0_4_2 {
            return Ok(());
        }
        match self.legacy {
            Legacy::Implemented => Ok(()),
            Legacy::NotImplemented => Err(VersionError::NotImplemented {
                method: self.name.to_string(),
                version: compat,
            }),
            Legacy::Absent => Err(VersionError::Absent {
                method: self.name.to_string(),
                version: compat,
            }),
        }
    }

    /// Whether input `is_base` gets parameter `p` resolved: mergekit 0.1.5 exempts the base
    /// only from non-base parameters; 0.0.4.2 exempted it from every per-input parameter.
    pub fn binds(p: &ParamSpec, is_base: bool, compat: Compat) -> bool {
        match p.scope {
            ParamScope::Shared => false,
            ParamScope::NonBase => !is_base,
            ParamScope::Input => !(is_base && compat == Compat::V0_0_4_2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_messages_are_mergekit_s() {
        let c = Contract::exactly_non_base(BaseRule::Required, 1);
        let g = "default.slices[0]";
        let e = c.check(&["a", "b", "c"], Some(&"a")).unwrap_err();
        assert_eq!(
            e.mergekit_message(g),
            "Merge method requires exactly 1 non-base inputs for default.slices[0]; got 2"
        );
        let e = c.check(&["a", "b"], None).unwrap_err();
        assert_eq!(e, ContractViolation::BaseRequired);
        let e = c.check(&["a", "a"], Some(&"a")).unwrap_err();
        assert_eq!(e, ContractViolation::Duplicate { index: 1 });
        let e = Contract::any(BaseRule::Optional)
            .check(&["a"], Some(&"z"))
            .unwrap_err();
        assert_eq!(e, ContractViolation::BaseNotPresent);
        assert!(Contract::any(BaseRule::Ignored)
            .check(&["a"], Some(&"z"))
            .is_ok());
        let e = Contract::at_least(BaseRule::Forbidden, 2)
            .check(&["a"], None)
            .unwrap_err();
        assert_eq!(
            e.mergekit_message(g),
            "Merge method requires at least 2 inputs for default.slices[0]; got 1"
        );
    }

    #[test]
    fn versions_are_refused_by_schema() {
        let mut m = MethodInfo::new("x", "X", Contract::any(BaseRule::Optional));
        assert!(m.check_version(Compat::V0_0_4_2).is_ok());
        m.legacy = Legacy::Absent;
        assert!(m.check_version(Compat::V0_1_5).is_ok());
        let e = m.check_version(Compat::V0_0_4_2).unwrap_err().to_string();
        assert!(e.contains("Unimplemented merge method x"), "{e}");
    }
}

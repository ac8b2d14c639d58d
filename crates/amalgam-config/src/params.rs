//! Parameter values: scalars, gradients, filters, their coercion to a parameter's declared type,
//! and their resolution across the scopes of a config (mergekit 0.1.5 semantics).

use std::collections::BTreeMap;

use amalgam_schema::{ParamSpec, Value};

use crate::{MergeConfig, ModelRef, OutputSlice};

/// A YAML scalar as given in a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// Number.
    Float(f64),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
    /// String (coerced later to the parameter's declared type, like pydantic does).
    Str(String),
}

impl Scalar {
    /// The value as a double when it is a number (`Int` or `Float`; not `Bool`, whatever
    /// Python thinks of `True + 1`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Float(x) => Some(*x),
            Scalar::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Scalar::Float(_) | Scalar::Int(_))
    }
}

impl std::fmt::Display for Scalar {
    /// Python's `repr`-like spelling, so messages quote values the way mergekit users see them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Float(x) => f.write_str(&py_float_repr(*x)),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A parameter setting: scalar, gradient, or filtered conditionals (mergekit §1.3).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A single value.
    Scalar(Scalar),
    /// A list interpolated over the layer position t.
    Gradient(Vec<Scalar>),
    /// `[{filter, value}, ...]`: the first matching entry wins. A single `{filter, value}`
    /// mapping is a list of one. mergekit only allows a scalar or a gradient as `value`.
    Filters(Vec<(Option<String>, ParamValue)>),
}

/// Parameters at one level (looked up by name; their order never matters).
pub type Parameters = BTreeMap<String, ParamValue>;

pub use amalgam_schema::ParamKind;

/// A value that cannot be coerced to the parameter's type (mergekit: pydantic
/// `ValidationError`, raised while planning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {kind}, got {got}{why}")]
pub struct CoerceError {
    /// The expected kind.
    pub kind: ParamKind,
    /// The offending value, spelled as in the config.
    pub got: String,
    /// More detail (", which has a fractional part"...), possibly empty.
    pub why: String,
}

fn fail(kind: ParamKind, got: &Scalar, why: &str) -> CoerceError {
    CoerceError {
        kind,
        got: match got {
            Scalar::Str(s) => format!("the string {s:?}"),
            other => format!("`{other}`"),
        },
        why: why.to_string(),
    }
}

/// Coerces a config scalar to a parameter's kind like pydantic 2's lax mode does.
///
/// * `Float`: ints and floats as they are; booleans as 1.0/0.0; strings are trimmed of
///   whitespace and parsed as a Rust/Python float literal: `"0.5"`, `"1e-3"` (a string in YAML
///   1.1, hence the common case), `".5"`, `"inf"`, `"nan"`, `"1_000"` (underscores only between
///   digits); anything else fails.
/// * `Int`: ints; booleans as 1/0; floats only when finite with no fractional part and within
///   64 bits; strings trimmed, with an optional sign, underscores between digits and an optional
///   `.0`/`.000` tail (`"3.0"` → 3; `"3.5"` and `"3."` fail).
/// * `Bool`: booleans; the ints 0/1 and the floats 0.0/1.0; the strings (any case, *not*
///   trimmed) `0 off f false n no` / `1 on t true y yes`.
pub fn coerce(scalar: &Scalar, kind: ParamKind) -> Result<Scalar, CoerceError> {
    match kind {
        ParamKind::Float => match scalar {
            Scalar::Float(x) => Ok(Scalar::Float(*x)),
            Scalar::Int(i) => Ok(Scalar::Float(*i as f64)),
            Scalar::Bool(b) => Ok(Scalar::Float(if *b { 1.0 } else { 0.0 })),
            Scalar::Str(s) => parse_py_float(s)
                .map(Scalar::Float)
                .ok_or_else(|| fail(kind, scalar, ", which does not parse as a number")),
        },
        ParamKind::Int => match scalar {
            Scalar::Int(i) => Ok(Scalar::Int(*i)),
            Scalar::Bool(b) => Ok(Scalar::Int(i64::from(*b))),
            Scalar::Float(x) => float_to_int(*x)
                .map(Scalar::Int)
                .map_err(|why| fail(kind, scalar, why)),
            Scalar::Str(s) => parse_py_int(s)
                .map(Scalar::Int)
                .ok_or_else(|| fail(kind, scalar, ", which does not parse as an integer")),
        },
        ParamKind::Bool => match scalar {
            Scalar::Bool(b) => Ok(Scalar::Bool(*b)),
            Scalar::Int(0) => Ok(Scalar::Bool(false)),
            Scalar::Int(1) => Ok(Scalar::Bool(true)),
            Scalar::Float(x) if *x == 0.0 => Ok(Scalar::Bool(false)),
            Scalar::Float(x) if *x == 1.0 => Ok(Scalar::Bool(true)),
            Scalar::Str(s) => match s.to_ascii_lowercase().as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => Ok(Scalar::Bool(false)),
                "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Scalar::Bool(true)),
                _ => Err(fail(kind, scalar, "")),
            },
            _ => Err(fail(kind, scalar, " (only 0 and 1 are booleans)")),
        },
    }
}

fn float_to_int(x: f64) -> Result<i64, &'static str> {
    if !x.is_finite() {
        Err(", which is not finite")
    } else if x.fract() != 0.0 {
        Err(", which has a fractional part")
    } else if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&x) {
        Err(", which is too large")
    } else {
        Ok(x as i64)
    }
}

/// Python's `str.strip()` whitespace (ASCII and Unicode), as pydantic strips numbers.
fn strip(s: &str) -> &str {
    s.trim_matches(|c: char| {
        c.is_whitespace() || c == '\u{1c}' || c == '\u{1d}' || c == '\u{1e}' || c == '\u{1f}'
    })
}

/// Removes `_` separators, accepting them only between two digits (Python's rule).
fn strip_underscores(s: &str) -> Option<String> {
    if !s.contains('_') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            let before = i.checked_sub(1).and_then(|j| b.get(j));
            let after = b.get(i + 1);
            if !matches!((before, after), (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit())
            {
                return None;
            }
        }
    }
    Some(s.replace('_', ""))
}

/// pydantic's float-from-string: strip, underscores, then a float literal (Rust's grammar is
/// the same as Python's `float()` for these, including `inf`, `infinity` and `nan` in any case).
pub(crate) fn parse_py_float(s: &str) -> Option<f64> {
    let t = strip_underscores(strip(s))?;
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok()
}

/// pydantic's int-from-string: strip, sign, digits with underscores, optional `.0+` tail
/// (`"3.0"` is 3, `"3."` is an error).
pub(crate) fn parse_py_int(s: &str) -> Option<i64> {
    let t = strip_underscores(strip(s))?;
    let t = match t.split_once('.') {
        Some((int, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => int.to_string(),
        Some(_) => return None,
        None => t,
    };
    let digits = t.strip_prefix(['+', '-']).unwrap_or(&t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<i64>().ok()
}

/// Python's `repr(float)`: shortest round-trip digits, scientific below 1e-4 and from 1e16.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

/// How the elements of a gradient are made comparable before interpolation.
trait Validate {
    fn validate(&self, s: &Scalar) -> Result<Scalar, CoerceError>;
}

/// No declared type: values stay as written (what [`evaluate`] does).
struct AsIs;
impl Validate for AsIs {
    fn validate(&self, s: &Scalar) -> Result<Scalar, CoerceError> {
        Ok(s.clone())
    }
}

impl Validate for ParamKind {
    fn validate(&self, s: &Scalar) -> Result<Scalar, CoerceError> {
        coerce(s, *self)
    }
}

/// Evaluates a setting for `tensor_name` at layer position `t` (mergekit §1.3), keeping
/// values as written (no declared type). See [`evaluate_as`] for the typed version mergekit
/// 0.1.5 actually runs; the two agree whenever the values already have the parameter's type.
pub fn evaluate(value: &ParamValue, tensor_name: &str, t: f64) -> Option<Scalar> {
    evaluate_with(value, tensor_name, t, &AsIs).unwrap_or(None)
}

/// Evaluates a setting the way mergekit 0.1.5's `evaluate_setting` does with a parameter's
/// validator:
///
/// * a scalar is coerced to `kind`;
/// * a gradient has every element coerced first; if all of them are then numbers (not
///   booleans) it is interpolated at `t` in doubles (`s = t·(n−1)`, `i0 = ⌊s⌋`,
///   `i1 = min(n−1, i0+1)`, `f = s−i0`, `(1−f)·v[i0] + f·v[i1]`) and the result coerced again
///   (so an `Int` gradient that lands between integers is an error, as in mergekit);
///   otherwise element `⌊t·(n−1)⌋` is taken; an empty list is `None`;
/// * filters: the first entry whose filter is null, `"*"` or a substring of `tensor_name`
///   (an empty tensor name matches only null and `"*"`); no match is `None`.
///
/// `t` is expected in `[0, 1]`; indexes are clamped so other values cannot panic.
///
/// mergekit 0.0.4.2 (`--mergekit-version 0.0.4.2`) had no declared types: its schema coerced
/// every parameter value to `float` when loading (`Union[float, List[float]]`, so `"0.5"` and
/// `true` became 0.5 and 1.0, and a non-numeric string failed the load), then interpolated
/// every list. Evaluating with [`ParamKind::Float`] reproduces those numbers for any
/// parameter, booleans included (a bool-typed gradient is then interpolated, not stepped, and
/// the engine tests the result for truth as 0.0.4.2 did). Its scopes and tensor names are the
/// same as 0.1.5's, without `modules`; only its required check differs (the global
/// `base_model` is exempt from every per-model parameter).
pub fn evaluate_as(
    value: &ParamValue,
    kind: ParamKind,
    tensor_name: &str,
    t: f64,
) -> Result<Option<Scalar>, CoerceError> {
    evaluate_with(value, tensor_name, t, &kind)
}

fn evaluate_with(
    value: &ParamValue,
    tensor_name: &str,
    t: f64,
    v: &dyn Validate,
) -> Result<Option<Scalar>, CoerceError> {
    match value {
        ParamValue::Scalar(s) => v.validate(s).map(Some),
        ParamValue::Gradient(items) => {
            if items.is_empty() {
                return Ok(None);
            }
            let values = items
                .iter()
                .map(|s| v.validate(s))
                .collect::<Result<Vec<_>, _>>()?;
            let last = values.len() - 1;
            let pick = |i: usize| values.get(i.min(last)).cloned();
            if !values.iter().all(Scalar::is_number) {
                // Python's int() truncates toward zero; negative t clamps to the first element.
                let scaled = t * last as f64;
                let i = if scaled > 0.0 { scaled as usize } else { 0 };
                return Ok(pick(i));
            }
            let scaled = t * last as f64;
            let i0f = scaled.trunc();
            let i0 = if i0f > 0.0 { i0f as usize } else { 0 }.min(last);
            let i1 = last.min(i0 + 1);
            let frac = scaled - i0f;
            let a = pick(i0).and_then(|s| s.as_f64()).unwrap_or(f64::NAN);
            let b = pick(i1).and_then(|s| s.as_f64()).unwrap_or(f64::NAN);
            let result = (1.0 - frac) * a + frac * b;
            v.validate(&Scalar::Float(result)).map(Some)
        }
        ParamValue::Filters(entries) => {
            for (filter, inner) in entries {
                let hit = match filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => !tensor_name.is_empty() && tensor_name.contains(f),
                };
                if hit {
                    return evaluate_with(inner, tensor_name, t, v);
                }
            }
            Ok(None)
        }
    }
}

/// The scopes searched for one parameter, highest precedence first (mergekit §1.4,
/// `ConfigReader.parameter_sources`).
///
/// Which tensor name the filters see (checked in mergekit 0.1.5's `parameter_resolver.py` and
/// `plan.py`): a **per-model** parameter (scope `input`/`non_base`) is resolved with that
/// model's **input** tensor name at *every* scope, global `parameters:` included; a **shared**
/// parameter is resolved with the **output** tensor name. The two differ when a slice moves
/// layers (`layer_range: [8, 16]` feeding output layers 0–7).
///
/// Which slice and `t` (mergekit 0.1.5 `plan.py`): a layer tensor uses its output slice and
/// `t = i/(L−1)` (`t = 1` when the slice has one layer); pre-weights (embeddings) use the
/// first slice and post-weights (final norm, `lm_head`) the last one, both at `t = 0`.
#[derive(Debug, Clone, Default)]
pub struct ParamScopes<'a> {
    /// Per-model chains only: the `parameters` of **every** source of the output slice whose
    /// model equals the model being resolved, in source order (a model listed twice in one
    /// slice contributes both). In `models:` syntax that is the model's `models[j].parameters`.
    pub sources: Vec<&'a Parameters>,
    /// The output slice's `parameters` (`slices[i].parameters`; none in `models:` syntax).
    pub slice: Option<&'a Parameters>,
    /// The module's `parameters` (`modules.<m>.parameters`; only in `modules:` syntax).
    pub module: Option<&'a Parameters>,
    /// The top-level `parameters`.
    pub global: Option<&'a Parameters>,
    /// Whether this chain is for a per-model parameter (input tensor names) or a shared one
    /// (output tensor names).
    pub per_model: bool,
}

impl<'a> ParamScopes<'a> {
    /// The chain of a shared parameter for `slice` (module parameters: `module`).
    pub fn shared(
        config: &'a MergeConfig,
        slice: Option<&'a OutputSlice>,
        module: Option<&'a Parameters>,
    ) -> Self {
        ParamScopes {
            sources: Vec::new(),
            slice: slice.map(|s| &s.parameters),
            module,
            global: Some(&config.parameters),
            per_model: false,
        }
    }

    /// The chain of a per-model parameter of `model` in `slice`.
    pub fn for_model(
        config: &'a MergeConfig,
        slice: &'a OutputSlice,
        module: Option<&'a Parameters>,
        model: &ModelRef,
    ) -> Self {
        ParamScopes {
            sources: slice
                .sources
                .iter()
                .filter(|s| &s.model == model)
                .map(|s| &s.parameters)
                .collect(),
            slice: Some(&slice.parameters),
            module,
            global: Some(&config.parameters),
            per_model: true,
        }
    }

    /// The scopes in precedence order.
    pub fn iter(&self) -> impl Iterator<Item = &'a Parameters> + '_ {
        self.sources
            .iter()
            .copied()
            .chain(self.slice)
            .chain(self.module)
            .chain(self.global)
    }

    /// Whether any scope mentions `key` at all (whatever it evaluates to).
    pub fn mentions(&self, key: &str) -> bool {
        self.iter().any(|p| p.contains_key(key))
    }
}

/// The value of parameter `key` for one tensor at layer position `t`, values kept as written
/// (see [`resolve_as`]). `None` when no scope gives a value: the method's default applies, or
/// mergekit's "Missing required parameter" error.
pub fn resolve(
    scopes: &ParamScopes,
    key: &str,
    input_tensor: &str,
    output_tensor: &str,
    t: f64,
) -> Option<Scalar> {
    resolve_with(scopes, key, input_tensor, output_tensor, t, &AsIs).unwrap_or(None)
}

/// mergekit 0.1.5's `resolve_parameter`: the first scope (highest precedence first) that has
/// `key` **and** evaluates to a value wins; a scope whose filters all miss, or whose list is
/// empty, falls through to the next. Values are coerced to `kind`; a value that cannot be is an
/// error even when a lower scope would have had a valid one (mergekit stops there too).
pub fn resolve_as(
    scopes: &ParamScopes,
    key: &str,
    kind: ParamKind,
    input_tensor: &str,
    output_tensor: &str,
    t: f64,
) -> Result<Option<Scalar>, CoerceError> {
    resolve_with(scopes, key, input_tensor, output_tensor, t, &kind)
}

/// [`resolve_as`] for a declared parameter, as the planner needs it: the value in the
/// parameter's type, or `None` when no scope gives one (the caller then applies the declared
/// default or mergekit's "Missing required parameter"). The one resolver of the workspace:
/// tests check it bit for bit against mergekit's.
pub fn resolve_value(
    scopes: &ParamScopes,
    spec: &ParamSpec,
    input_tensor: &str,
    output_tensor: &str,
    t: f64,
) -> Result<Option<Value>, CoerceError> {
    let got = resolve_as(scopes, spec.name, spec.kind, input_tensor, output_tensor, t)?;
    match got {
        None => Ok(None),
        Some(Scalar::Float(f)) => Ok(Some(Value::Float(f))),
        Some(Scalar::Int(i)) => Ok(Some(Value::Int(i))),
        Some(Scalar::Bool(b)) => Ok(Some(Value::Bool(b))),
        // `coerce` never yields a string for a declared kind; kept as an error, not a panic.
        Some(s @ Scalar::Str(_)) => Err(fail(spec.kind, &s, "")),
    }
}

fn resolve_with(
    scopes: &ParamScopes,
    key: &str,
    input_tensor: &str,
    output_tensor: &str,
    t: f64,
    v: &dyn Validate,
) -> Result<Option<Scalar>, CoerceError> {
    let tensor = if scopes.per_model {
        input_tensor
    } else {
        output_tensor
    };
    for params in scopes.iter() {
        if let Some(value) = params.get(key) {
            if let Some(s) = evaluate_with(value, tensor, t, v)? {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

/// The text of mergekit's error for a required parameter no scope provides.
///
/// `model` is `Some` for a per-model parameter (the tensor is then the model's input tensor
/// name), `None` for a shared one (the output tensor name).
pub fn missing_parameter_message(key: &str, model: Option<&ModelRef>, tensor: &str) -> String {
    match model {
        Some(m) => format!("Missing required parameter {key} for {m}.{tensor}"),
        None => format!("Missing required parameter {key} for {tensor}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python() {
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(0.5), "0.5");
        assert_eq!(py_float_repr(1e-10), "1e-10");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(1.5e16), "1.5e+16");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(123456789012345.0), "123456789012345.0");
    }
}

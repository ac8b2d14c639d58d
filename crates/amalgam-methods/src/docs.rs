//! The method reference (`docs/methods.md`), generated from each method's [`MethodInfo`].
//!
//! The reference is rendered from the same declarations the engine uses to resolve parameters and
//! check input contracts, so it cannot drift from the behaviour: a test regenerates it and fails
//! when the committed file differs. Third-party crates can render their own methods the same way
//! with [`method_markdown`].

use std::fmt::Write as _;

use crate::{
    BaseRule, Contract, Legacy, MergeMethod, MethodInfo, ParamKind, ParamScope, Registry, Value,
};

/// The header line that marks the file as generated and says how to refresh it.
pub const GENERATED_NOTICE: &str = "<!-- Generated from each method's MethodInfo by \
amalgam_methods::docs::methods_markdown. Do not edit by hand: run \
`AMALGAM_BLESS=1 cargo test -p amalgam-methods --test docs` to refresh. -->";

/// The whole reference for every method of `registry`, in name order: an overview table, then
/// one section per method.
pub fn methods_markdown(registry: &Registry) -> String {
    let mut s = String::new();
    s.push_str("# Merge methods\n\n");
    s.push_str(GENERATED_NOTICE);
    s.push_str("\n\n");
    s.push_str(
        "Every method amalgam knows, with the parameters it reads from a mergekit YAML config. \
         Scopes say where a parameter is given: *shared* parameters have one value per tensor \
         (top-level `parameters:` or a slice's), *per input* ones one value per model (the \
         model's own `parameters:` first), *per non-base input* ones one value per model other \
         than the base. Any value may be a gradient (a list interpolated over layers) or a \
         tensor-name filter list, as in mergekit. Random methods draw from PyTorch's CPU \
         generator: pass `--random-seed` to reproduce a run.\n\n",
    );
    s.push_str("| Method | Name | Base model | Inputs | Random |\n");
    s.push_str("|---|---|---|---|---|\n");
    for m in registry.iter() {
        let i = m.info();
        let _ = writeln!(
            s,
            "| [`{}`](#{}) | {} | {} | {} | {} |",
            i.name,
            anchor(i.name),
            cell(i.pretty_name),
            base_short(i.contract.base),
            count_text(&i.contract),
            if i.random { "yes" } else { "no" }
        );
    }
    for m in registry.iter() {
        s.push('\n');
        s.push_str(&method_markdown(m.as_ref()));
    }
    s
}

/// One method's section: heading, reference, formula, contract, parameters and deviations.
pub fn method_markdown(method: &dyn MergeMethod) -> String {
    info_markdown(method.info())
}

/// [`method_markdown`] from the declarations alone.
pub fn info_markdown(i: &MethodInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## {}\n", i.name);
    let _ = write!(s, "**{}**", i.pretty_name);
    if let Some(url) = i.reference_url {
        let _ = write!(s, " · reference: <{url}>");
    }
    s.push_str("\n\n");
    let _ = writeln!(s, "{}\n", one_line(i.summary));
    let _ = writeln!(s, "- Base model: {}", base_long(i.contract.base));
    let _ = writeln!(s, "- Inputs: {}", count_text(&i.contract));
    let _ = writeln!(s, "- mergekit 0.0.4.2: {}", legacy_text(i.legacy));
    let _ = writeln!(
        s,
        "- Random: {}",
        if i.random {
            "yes (reproducible with `--random-seed`)"
        } else {
            "no"
        }
    );
    s.push('\n');
    if i.params.is_empty() {
        s.push_str("Parameters: none.\n\n");
    } else {
        s.push_str("| Parameter | Scope | Type | Default | Meaning |\n");
        s.push_str("|---|---|---|---|---|\n");
        for p in &i.params {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {} |",
                p.name,
                scope_text(p.scope),
                kind_text(p.kind),
                match p.default {
                    None => "required".to_string(),
                    Some(v) => format!("`{}`", value_text(v)),
                },
                cell(p.doc)
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "Deviations from mergekit: {}", one_line(i.deviations));
    s
}

/// A value as it would be written in YAML.
pub fn value_text(v: Value) -> String {
    match v {
        Value::Float(f) => format!("{f:?}"),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

/// GitHub's heading anchor for a method name (lowercase, `_` kept, spaces to `-`).
fn anchor(name: &str) -> String {
    name.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

/// Declarations are Rust string literals with `\` continuations; collapse any stray whitespace
/// runs so each paragraph stays one Markdown line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

fn base_short(b: BaseRule) -> &'static str {
    match b {
        BaseRule::Required => "required",
        BaseRule::Optional => "optional",
        BaseRule::Forbidden => "not allowed",
        BaseRule::Ignored => "ordinary input",
    }
}

fn base_long(b: BaseRule) -> &'static str {
    match b {
        BaseRule::Required => "required (`base_model:`)",
        BaseRule::Optional => "optional (`base_model:`)",
        BaseRule::Forbidden => "not allowed",
        BaseRule::Ignored => "no special role; if `base_model:` is given it is an ordinary input",
    }
}

fn count_text(c: &Contract) -> String {
    let range = |min: usize, max: Option<usize>| match max {
        Some(m) if m == min => format!("exactly {min}"),
        Some(m) => format!("{min} to {m}"),
        None if min <= 1 => "any number (at least one)".to_string(),
        None => format!("at least {min}"),
    };
    match (c.min_non_base, c.max_non_base) {
        (None, None) => {
            let r = range(c.min_inputs, c.max_inputs);
            if c.min_inputs <= 1 && c.max_inputs.is_none() {
                r
            } else {
                format!("{r}, base included")
            }
        }
        (min, max) => {
            let min = min.unwrap_or(0);
            let r = match max {
                None => format!("at least {min}"),
                Some(_) => range(min, max),
            };
            format!("{r} besides the base")
        }
    }
}

fn legacy_text(l: Legacy) -> &'static str {
    match l {
        Legacy::Implemented => "reproduced (`--mergekit-version 0.0.4.2`)",
        Legacy::NotImplemented => {
            "mergekit 0.0.4.2 has it, but amalgam does not reproduce its arithmetic yet (refused)"
        }
        Legacy::Absent => "not in mergekit 0.0.4.2 (refused under `--mergekit-version 0.0.4.2`)",
    }
}

fn scope_text(s: ParamScope) -> &'static str {
    match s {
        ParamScope::Shared => "shared",
        ParamScope::Input => "per input",
        ParamScope::NonBase => "per non-base input",
    }
}

fn kind_text(k: ParamKind) -> &'static str {
    match k {
        ParamKind::Float => "float",
        ParamKind::Bool => "bool",
        ParamKind::Int => "int",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_github() {
        assert_eq!(anchor("dare_ties"), "dare_ties");
        assert_eq!(anchor("Model Stock"), "model-stock");
    }

    #[test]
    fn cells_stay_in_their_column() {
        assert_eq!(cell("a |b\n   c"), "a \\|b c");
    }

    #[test]
    fn values_read_like_yaml() {
        assert_eq!(value_text(Value::Float(1.0)), "1.0");
        assert_eq!(value_text(Value::Float(0.25)), "0.25");
        assert_eq!(value_text(Value::Int(3)), "3");
        assert_eq!(value_text(Value::Bool(false)), "false");
    }
}

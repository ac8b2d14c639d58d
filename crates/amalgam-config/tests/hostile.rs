//! Hostile config texts: each must be refused with an error, never a panic, a stack overflow
//! or unbounded memory.

/// Nested aliases ("billion laughs"): seven levels of ten aliases would expand to 10^7 values;
/// the loader stops counting at its bound and says why.
#[test]
fn alias_bomb_is_refused() {
    let mut t = String::from("merge_method: linear\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..7 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        t.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let start = std::time::Instant::now();
    let err = match amalgam_config::parse_str(&t) {
        Ok(_) => panic!("an alias bomb was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("aliases"), "{err}");
    assert!(err.contains("1000000"), "{err}");
    // Refused while counting, not after building 10^7 nodes (which takes seconds).
    assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
}

/// Aliases used sensibly still work: the alias expands to its anchor's value.
#[test]
fn modest_aliases_still_load() {
    let t = "merge_method: linear
models:
  - model: a
    parameters: &w {weight: 0.5}
  - model: b
    parameters: *w
";
    let loaded = amalgam_config::parse_str(t).expect("aliases within bounds");
    let models = loaded.config.models.expect("models");
    assert_eq!(models.len(), 2);
    assert_eq!(
        format!("{:?}", models.first().map(|m| &m.parameters)),
        format!("{:?}", models.get(1).map(|m| &m.parameters))
    );
}

/// Deeply nested flow collections: the YAML parser's recursion limit turns them into an error
/// (a stack overflow would abort the process).
#[test]
fn deep_nesting_is_refused() {
    let depth = 100_000;
    let t = format!(
        "merge_method: linear\nparameters:\n  x: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let err = match amalgam_config::parse_str(&t) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("recursion limit"), "{err}");
}

/// Layer ranges and numbers beyond every integer type.
#[test]
fn huge_numbers_are_errors() {
    for t in [
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 99999999999999999999999]\n",
        "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1e999999}\n",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, .inf]\n",
    ] {
        // Either outcome is fine as long as nothing panics; an accepted config must keep the
        // number as mergekit would (an infinite weight is a float).
        let _ = amalgam_config::parse_str(t);
    }
}

/// A long gradient written out in full is not an alias bomb: PyYAML reads it, and so does
/// amalgam (issue: a 10^6-entry gradient was refused with a message blaming aliases).
#[test]
fn long_literal_gradient_loads() {
    let n = 1_100_000;
    let mut t = String::from(
        "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\nparameters:\n  t: [",
    );
    t.push_str(&vec!["0.5"; n].join(", "));
    t.push_str("]\n");
    let loaded = amalgam_config::parse_str(&t).expect("a literal list of 1.1M values loads");
    match &loaded.config.parameters["t"] {
        amalgam_config::ParamValue::Gradient(v) => assert_eq!(v.len(), n),
        other => panic!("{other:?}"),
    }
}

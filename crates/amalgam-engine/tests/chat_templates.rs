//! amalgam's templates for mergekit's built-in chat template names render what mergekit's own
//! files render: `tests/chat-templates/renders.json` holds mergekit 0.1.5's templates rendered
//! by transformers (`make_renders.py` next to it; versions in the file). Here the same
//! conversations go through amalgam's templates with minijinja configured as transformers
//! configures jinja2 (trim_blocks, lstrip_blocks, a `raise_exception` that fails the render),
//! and every output must be equal string for string; where mergekit's render raised, ours must
//! raise too.

use std::path::Path;

use amalgam_engine::{builtin_chat_template, BUILTIN_CHAT_TEMPLATES};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

fn renders() -> Json {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/chat-templates/renders.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("syntax"),
    );
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    for (name, text) in BUILTIN_CHAT_TEMPLATES {
        env.add_template(name, text)
            .unwrap_or_else(|e| panic!("template {name}: {e}"));
    }
    env
}

#[test]
fn builtin_templates_render_as_mergekits() {
    let data = renders();
    let env = env();
    let cases = data["cases"].as_array().expect("cases");
    assert!(cases.len() >= 200, "only {} renderings", cases.len());
    let mut errs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in cases {
        let name = c["template"].as_str().expect("template");
        let conv = c["conversation"].as_str().expect("conversation");
        let agp = c["add_generation_prompt"].as_bool().expect("agp");
        let toks = &data["tokens"][c["tokens"].as_str().expect("tokens")];
        seen.insert(name.to_string());
        let t = env.get_template(name).expect("registered");
        let got = t.render(context! {
            messages => Value::from(Serde(&data["conversations"][conv])),
            add_generation_prompt => agp,
            bos_token => toks["bos_token"].as_str().expect("bos"),
            eos_token => toks["eos_token"].as_str().expect("eos"),
            tools => Value::from(()),
            documents => Value::from(()),
        });
        let what = format!(
            "{name} / {conv} / add_generation_prompt={agp} / {}",
            c["tokens"]
        );
        match (got, c.get("output").and_then(Json::as_str)) {
            (Ok(g), Some(e)) if g == e => {}
            (Ok(g), Some(e)) => errs.push(format!("{what}:\n  mergekit {e:?}\n  amalgam  {g:?}")),
            (Ok(g), None) => errs.push(format!("{what}: mergekit raised, amalgam gave {g:?}")),
            (Err(_), None) => {}
            (Err(e), Some(x)) => errs.push(format!("{what}: amalgam raised {e}, mergekit {x:?}")),
        }
    }
    let names: std::collections::BTreeSet<String> = BUILTIN_CHAT_TEMPLATES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(seen, names, "the fixture covers every built-in name");
    assert!(
        errs.is_empty(),
        "{} differences:\n{}",
        errs.len(),
        errs.join("\n")
    );
}

#[test]
fn the_builtin_names_are_the_ones_validation_accepts() {
    let engine: Vec<&str> = BUILTIN_CHAT_TEMPLATES.iter().map(|(n, _)| *n).collect();
    assert_eq!(engine, amalgam_config::BUILTIN_CHAT_TEMPLATES);
    for n in engine {
        assert!(builtin_chat_template(n).is_some_and(|t| t.contains("{%")));
    }
    assert!(builtin_chat_template("zephyr").is_none());
}

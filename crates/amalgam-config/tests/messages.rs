//! Snapshots of the error and warning texts for broken configs: what a user sees.

mod common;

use std::path::Path;

use amalgam_config::{parse_str, unsupported_features, validate, ConfigError};

/// Everything amalgam says about `text`, as the CLI would print it, without and with `strict`.
fn report(text: &str) -> String {
    let methods = common::mergekit_methods();
    let file = Some(Path::new("config.yml"));
    match parse_str(text) {
        Err(ConfigError::Invalid { diagnostics, .. }) => diagnostics
            .iter()
            .map(|d| d.render(file))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("{e}"),
        Ok(loaded) => {
            let mut out = String::new();
            for strict in [false, true] {
                out.push_str(if strict {
                    "--- strict\n"
                } else {
                    "--- default\n"
                });
                let diags = validate(&loaded, &methods, strict, amalgam_schema::Compat::V0_1_5);
                if diags.is_empty() {
                    out.push_str("(no findings)\n");
                }
                for d in diags {
                    out.push_str(&d.render(file));
                    out.push('\n');
                }
            }
            out
        }
    }
}

macro_rules! case {
    ($name:ident, $text:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(report($text));
        }
    };
}

case!(
    typos,
    "merge_method: ties
base-model: base
dype: bfloat16
models:
  - model: a
    paramters:
      weight: 0.5
  - model: b
    parameters:
      weight: 0.5
      densty: 0.5
    revision: main
parameters:
  lamda: 0.9
  normalize: true
"
);

case!(
    method_parameter_outside_parameters,
    "merge_method: sce
base_model: base
models:
  - model: a
  - model: b
select_topk: .15
"
);

case!(
    wrong_types,
    "merge_method: 3
models: a/b
parameters:
  weight: {filter: 3, value: 1}
"
);

case!(
    wrong_types_in_slices,
    "merge_method: passthrough
slices:
  - sources:
      - model: a
        layer_range: [0]
  - sources:
      - model: b
        layer_range: [4, 2]
  - sources:
      - model: c
        layer_range: [0, x]
"
);

case!(
    bad_gradients,
    "merge_method: linear
models:
  - model: a
    parameters:
      weight: [0.1, [0.2]]
  - model: b
    parameters:
      weight: [0.1, null]
  - model: c
    parameters:
      weight: [{filter: mlp, value: 1}, 0.5]
  - model: d
    parameters:
      weight: {filter: mlp, value: {filter: q, value: 1}}
  - model: e
    parameters:
      weight:
"
);

case!(
    bad_value_types,
    "merge_method: ties
base_model: base
models:
  - model: a
    parameters:
      weight: heavy
      density: [0.5, \"0.x\"]
parameters:
  normalize: maybe
  int8_mask: 2
  lambda: \"1e-3\"
"
);

case!(
    multi_document,
    "merge_method: linear
models:
  - model: a
    parameters: {weight: 1}
---
name: second
merge_method: linear
models:
  - model: b
    parameters: {weight: 1}
"
);

case!(
    missing_merge_method,
    "models:
  - model: a
    parameters: {weight: 1}
"
);

case!(
    both_tokenizer_keys,
    "merge_method: linear
tokenizer_source: union
tokenizer:
  source: base
models:
  - model: a
    parameters: {weight: 1}
"
);

case!(
    exactly_one_of_models_slices_modules,
    "merge_method: linear
models:
  - model: a
slices:
  - sources:
      - model: a
        layer_range: [0, 2]
"
);

case!(
    none_of_models_slices_modules,
    "merge_method: linear
models: []
"
);

case!(
    bad_model_refs,
    "merge_method: linear
models:
  - model: org/a@v1@v2
  - model: org/a+lora1+lora2
  - model: org/mixtral#expert=x
  - model: org/mixtral#experts=1
  - model: 12
  - model: {lora: x}
  - model: {model: {revision: main}}
"
);

case!(
    yaml_syntax_error,
    "merge_method: linear
models:
  - model: a
    parameters: {weight: [0.1, 0.2}
"
);

case!(
    yaml_bad_indentation,
    "merge_method: linear
models:
  - model: a
   parameters:
      weight: 1
"
);

case!(
    empty_config,
    "# nothing but a comment
"
);

case!(
    not_a_mapping,
    "- merge_method: linear
"
);

case!(
    unknown_dtype,
    "merge_method: linear
dtype: bf16
out_dtype: torch.float16
models:
  - model: a
    parameters: {weight: 1}
"
);

case!(
    layer_count_mismatch,
    "merge_method: slerp
base_model: a
slices:
  - sources:
      - model: a
        layer_range: [0, 8]
      - model: b
        layer_range: [0, 6]
parameters:
  t: 0.5
"
);

case!(
    unknown_method,
    "merge_method: slurp
models:
  - model: a
"
);

case!(
    linear_without_weight,
    "merge_method: linear
models:
  - model: org/a
  - model: org/b
"
);

case!(
    linear_with_some_weights_missing,
    "merge_method: linear
base_model: org/base
models:
  - model: org/a
    parameters: {weight: 1}
  - model: org/b
    parameters: {weight: 1}
"
);

case!(
    shared_parameter_given_per_model,
    "merge_method: slerp
base_model: a
models:
  - model: a
  - model: b
    parameters:
      t: 0.3
"
);

case!(
    input_contracts,
    "merge_method: slerp
base_model: base
slices:
  - sources:
      - model: a
        layer_range: [0, 2]
      - model: b
        layer_range: [0, 2]
  - sources:
      - model: base
        layer_range: [2, 4]
      - model: b
        layer_range: [2, 4]
      - model: c
        layer_range: [2, 4]
parameters:
  t: 0.5
"
);

case!(
    duplicate_keys,
    "merge_method: dare_ties
base_model: base
models:
  - model: a
    parameters: {weight: 1, density: 0.5}
merge_method: task_arithmetic
"
);

case!(
    parameters_as_a_list,
    "merge_method: task_arithmetic
base_model: base
models:
  - model: a
parameters:
  - weight: 1.0
"
);

case!(
    module_without_slices_or_models,
    "merge_method: linear
modules:
  text:
    parameters: {weight: 1}
"
);

#[test]
fn unsupported_features_are_listed() {
    let text = "merge_method: linear
base_model: org/base+org/lora
chat_template: chatml
tokenizer:
  source: union
  tokens:
    <|im_start|>:
      source: {kind: model_token, model: org/a, token_id: 3}
modules:
  text:
    models:
      - model: {model: {path: org/a, revision: main}, override_architecture: MistralForCausalLM}
        parameters: {weight: 1}
      - model: org/b#expert=2
        parameters: {weight: 1}
";
    let loaded = parse_str(text).unwrap();
    let listed = unsupported_features(&loaded.config)
        .into_iter()
        .map(|(path, key)| format!("{path}: {key}"))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(listed);
}

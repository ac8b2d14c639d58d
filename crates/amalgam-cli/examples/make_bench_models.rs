//! Generates synthetic checkpoints for the benchmarks in `bench/` (not used by tests).
//!
//! `make_bench_models dense OUT N HIDDEN INTER LAYERS VOCAB DTYPE` writes N Mistral-shaped models
//! `OUT/model-0..N-1`; `make_bench_models mixtral OUT HIDDEN INTER LAYERS VOCAB EXPERTS` writes one
//! bf16 Mixtral in the Hub's per-expert layout. Values are deterministic pseudo-random normals
//! scaled like trained weights.

use std::path::Path;

use amalgam_io::{
    convert, DType, IndexStyle, OutputWriter, PlannedTensor, ShardLayout, ShardRule, ShardSpec,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        // xorshift64*, then a cheap approximately-normal value (sum of uniforms).
        let mut s = 0f32;
        for _ in 0..4 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let u = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
            s += u;
        }
        (s - 2.0) * 0.035
    }
}

fn write_model(
    dir: &Path,
    tensors: Vec<(String, Vec<usize>)>,
    dtype: DType,
    seed: u64,
    config: &str,
) {
    let planned: Vec<PlannedTensor> = tensors
        .iter()
        .map(|(n, s)| PlannedTensor {
            name: n.clone(),
            dtype,
            shape: s.clone(),
        })
        .collect();
    let spec = ShardSpec {
        rule: ShardRule::Bytes(2_000_000_000),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    };
    let layout = ShardLayout::plan(planned, &spec).expect("layout");
    let w = OutputWriter::create(dir, layout).expect("create");
    let mut rng = Rng(seed | 1);
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let mut bytes = vec![0u8; n * dtype.size()];
        convert::encode_f32(dtype, &vals, &mut bytes).expect("encode");
        w.write_tensor(name, &bytes).expect("write");
    }
    w.write_file("config.json", config.as_bytes())
        .expect("config");
    w.finish().expect("finish");
}

fn common(hidden: usize, layers: usize, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let kv = hidden / 2;
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, hidden]),
        ("model.norm.weight".to_string(), vec![hidden]),
        ("lm_head.weight".to_string(), vec![vocab, hidden]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        t.push((format!("{p}input_layernorm.weight"), vec![hidden]));
        t.push((format!("{p}post_attention_layernorm.weight"), vec![hidden]));
        t.push((format!("{p}self_attn.q_proj.weight"), vec![hidden, hidden]));
        t.push((format!("{p}self_attn.k_proj.weight"), vec![kv, hidden]));
        t.push((format!("{p}self_attn.v_proj.weight"), vec![kv, hidden]));
        t.push((format!("{p}self_attn.o_proj.weight"), vec![hidden, hidden]));
    }
    t
}

/// Model dimensions.
struct Dims {
    hidden: usize,
    inter: usize,
    layers: usize,
    vocab: usize,
}

fn config(arch: &str, mt: &str, d: &Dims, dtype: &str, extra: &str) -> String {
    let Dims {
        hidden,
        inter,
        layers,
        vocab,
    } = d;
    format!(
        "{{\n  \"architectures\": [\"{arch}\"],\n  \"model_type\": \"{mt}\",\n  \"hidden_size\": {hidden},\n  \
         \"intermediate_size\": {inter},\n  \"num_hidden_layers\": {layers},\n  \"num_attention_heads\": 16,\n  \
         \"num_key_value_heads\": 8,\n  \"vocab_size\": {vocab},\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 1000000.0,\n  \
         {extra}\"torch_dtype\": \"{dtype}\"\n}}\n"
    )
}

fn arg(a: &[String], i: usize) -> usize {
    a.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} must be a number"))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("dense") => {
            let out = Path::new(&a[2]);
            let (n, hidden, inter, layers, vocab) = (arg(&a, 3), arg(&a, 4), arg(&a, 5), arg(&a, 6), arg(&a, 7));
            let dtype = DType::from_mergekit(&a[8]).expect("dtype");
            std::fs::create_dir_all(out).expect("mkdir");
            for m in 0..n {
                let mut t = common(hidden, layers, vocab);
                for l in 0..layers {
                    let p = format!("model.layers.{l}.mlp.");
                    t.push((format!("{p}gate_proj.weight"), vec![inter, hidden]));
                    t.push((format!("{p}up_proj.weight"), vec![inter, hidden]));
                    t.push((format!("{p}down_proj.weight"), vec![hidden, inter]));
                }
                let cfg = config("MistralForCausalLM", "mistral", &Dims { hidden, inter, layers, vocab }, dtype.torch_name(), "");
                write_model(&out.join(format!("model-{m}")), t, dtype, 1000 + m as u64, &cfg);
            }
        }
        Some("mixtral") => {
            let out = Path::new(&a[2]);
            let (hidden, inter, layers, vocab, experts) = (arg(&a, 3), arg(&a, 4), arg(&a, 5), arg(&a, 6), arg(&a, 7));
            let mut t = common(hidden, layers, vocab);
            for l in 0..layers {
                let p = format!("model.layers.{l}.block_sparse_moe.");
                t.push((format!("{p}gate.weight"), vec![experts, hidden]));
                for e in 0..experts {
                    t.push((format!("{p}experts.{e}.w1.weight"), vec![inter, hidden]));
                    t.push((format!("{p}experts.{e}.w2.weight"), vec![hidden, inter]));
                    t.push((format!("{p}experts.{e}.w3.weight"), vec![inter, hidden]));
                }
            }
            let extra = format!(
                "\"num_local_experts\": {experts},\n  \"num_experts_per_tok\": 2,\n  \"output_router_logits\": false,\n  \
                 \"router_aux_loss_coef\": 0.001,\n  \"router_jitter_noise\": 0.0,\n  "
            );
            let cfg = config("MixtralForCausalLM", "mixtral", &Dims { hidden, inter, layers, vocab }, "bfloat16", &extra);
            write_model(out, t, DType::BF16, 7, &cfg);
        }
        _ => eprintln!("usage: make_bench_models dense OUT N HIDDEN INTER LAYERS VOCAB DTYPE | mixtral OUT HIDDEN INTER LAYERS VOCAB EXPERTS"),
    }
}

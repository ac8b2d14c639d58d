//! The `amalgam` command line: thin glue over the engine, as a library.
//!
//! The `amalgam` binary is `fn main() { amalgam_cli::main_with(Registry::builtin()) }`. Keeping
//! the whole command line here, parameterised by the [`Registry`], is what lets a third-party
//! crate ship its own binary with extra merge methods and every amalgam command and flag,
//! without forking:
//!
//! ```no_run
//! use std::process::ExitCode;
//! use amalgam_methods::Registry;
//!
//! fn main() -> ExitCode {
//!     let registry = Registry::builtin();
//!     // registry.register(std::sync::Arc::new(MyMethod::new()));
//!     amalgam_cli::main_with(registry)
//! }
//! ```
#![deny(missing_docs)]

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use amalgam_engine::{MergeOptions, PlanOptions, TorchThreads, UnmixOptions};
use amalgam_io::DType;
use amalgam_methods::{Compat, Registry};
use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgAction, Args, Parser, Subcommand};

mod output;
mod progress;
mod validate;

#[derive(Parser)]
#[command(
    name = "amalgam",
    version,
    about = "Merge LLM checkpoints from mergekit YAML configs, bit for bit, streaming"
)]
struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Merge models as a mergekit YAML config says (like `mergekit-yaml CONFIG OUT_PATH`).
    #[command(
        after_help = "The other flags of mergekit-yaml 0.1.5 (--cuda, --device, \
        --low-cpu-memory, --read-to-gpu, --multi-gpu, --gpu-rich, --lazy-unpickle, \
        --clone-tensors, --trust-remote-code, --async-write, --write-threads, \
        --lora-merge-cache, --lora-merge-dtype, and their --no- forms) are accepted too; \
        README.md says what each does here.\n\nExit status: 0 success, 1 the merge failed, \
        2 bad usage."
    )]
    Merge(MergeArgs),
    /// Check configs without loading any model; one line per file, exit 0 only if all are valid.
    Validate {
        /// Config files.
        #[arg(required = true)]
        configs: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Check against this mergekit release's methods: 0.1.5 or 0.0.4.2.
        #[arg(long, default_value = "0.1.5", value_parser = parse_compat)]
        mergekit_version: Compat,
    },
    /// List the merge methods and their parameters.
    Methods,
    /// Turn a Mixtral checkpoint into dense Mistral models, one per expert.
    Unmix(UnmixArgs),
    /// Recompute a merge and compare it with an existing model folder (exit 0 only if identical).
    Verify(VerifyArgs),
    /// Download Hub models (`org/name[@revision]`, or every Hub model a config names) into the
    /// Hugging Face cache, without merging.
    Download(DownloadArgs),
}

#[derive(Args)]
struct DownloadArgs {
    /// Hub ids (`org/name[@revision]`) or mergekit YAML configs (`.yml`/`.yaml`).
    #[arg(required = true)]
    models: Vec<String>,
    /// Hugging Face cache folder (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long, alias = "transformers-cache")]
    hf_cache: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct Common {
    /// Which mergekit release to reproduce (arithmetic and file layout): 0.1.5 or 0.0.4.2.
    #[arg(long, default_value = "0.1.5", value_parser = parse_compat)]
    mergekit_version: Compat,
    /// Hugging Face hub cache folder (default: HF_HUB_CACHE, HF_HOME/hub,
    /// ~/.cache/huggingface/hub). `--transformers-cache` is mergekit's name for it.
    #[arg(long, visible_alias = "transformers-cache", value_name = "DIR")]
    hf_cache: Option<PathBuf>,
    /// Number of threads (default: all cores).
    #[arg(short = 'j', long = "num-threads")]
    num_threads: Option<usize>,
    /// No progress bar and no summary line.
    #[arg(long, overrides_with = "no_quiet")]
    quiet: bool,
    /// Show the progress bar (the default).
    #[arg(long, overrides_with = "quiet")]
    no_quiet: bool,
}

/// `amalgam merge`: `mergekit-yaml`'s arguments and every one of its flags (0.1.5), plus
/// amalgam's own (`--strict`, `--mergekit-version`, `--overwrite`).
///
/// mergekit declares each boolean option as a `--x/--no-x` pair where the last one given wins;
/// here each pair is two clap flags overriding each other, which behaves the same. Flags that
/// cannot change amalgam's output are accepted so that a mergekit command line runs unchanged;
/// the ones asking for something amalgam does differently (GPU) get a single
/// warning listing them.
#[derive(Args)]
struct MergeArgs {
    /// The mergekit YAML config.
    config: PathBuf,
    /// Output folder: must not exist or be empty, unless --overwrite.
    out_path: PathBuf,
    #[command(flatten)]
    common: Common,
    /// Replace OUT_PATH if it already holds a model (the new model is merged beside it and
    /// swapped in only when complete).
    #[arg(long)]
    overwrite: bool,
    /// For a multi-document (mergekit-multi) config: the folder where each named merge is
    /// written (`DIR/<name>`); OUT_PATH receives the unnamed, final one.
    #[arg(short = 'I', long, value_name = "DIR")]
    intermediate_dir: Option<PathBuf>,
    /// Multi-document configs: skip a named merge whose folder already holds a model
    /// (mergekit-multi's default).
    #[arg(long, overrides_with = "no_lazy")]
    lazy: bool,
    /// Multi-document configs: redo every named merge.
    #[arg(long, overrides_with = "lazy")]
    no_lazy: bool,
    /// Maximum shard size: bytes (elements with --mergekit-version 0.0.4.2), with optional K/M/B suffix.
    #[arg(long, default_value = "5B", value_parser = parse_kmb)]
    out_shard_size: u64,
    /// Copy the tokenizer of the donor model (default on).
    #[arg(long, overrides_with = "no_copy_tokenizer")]
    copy_tokenizer: bool,
    /// Do not copy the tokenizer.
    #[arg(long, overrides_with = "copy_tokenizer")]
    no_copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml (default on).
    #[arg(long, overrides_with = "no_write_model_card")]
    write_model_card: bool,
    /// Do not write the model card.
    #[arg(long, overrides_with = "write_model_card")]
    no_write_model_card: bool,
    /// Seed for methods that draw random numbers (dare, della...); printed when drawn.
    #[arg(long)]
    random_seed: Option<u64>,
    /// Allow mixing architectures.
    #[arg(long, overrides_with = "no_allow_crimes")]
    allow_crimes: bool,
    /// Refuse mixing architectures (the default).
    #[arg(long, overrides_with = "allow_crimes")]
    no_allow_crimes: bool,
    /// Turn warnings (linear without weights, unknown keys) into mergekit's errors.
    #[arg(long)]
    strict: bool,
    /// Reproduce mergekit run with N PyTorch threads (`torch.get_num_threads()`; mergekit's default
    /// is the machine's core count): reductions over 32,768+ elements round differently per
    /// thread count. Default 1, so the output never depends on the machine.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_torch_threads)]
    torch_threads: usize,
    /// Expert layout of a Mixtral (mixture-of-experts) output: `fused` (the default, what
    /// mergekit 0.1.5 and transformers 5 write: `mlp.experts.gate_up_proj` / `down_proj`) or
    /// `per-expert` (`block_sparse_moe.experts.E.w1/w2/w3.weight`, for loaders older than
    /// transformers 5). The same values either way, only cut differently.
    #[arg(long, value_name = "LAYOUT", default_value = "fused", value_parser = parse_moe_layout)]
    moe_layout: amalgam_engine::MoeLayout,
    /// Merge a tensor in chunks, reading its inputs once per pass, when its inputs would take
    /// more than MIB mebibytes as f32 and its method can (slerp): memory then stays at a few
    /// chunks per thread, whatever the tensor's size. The same bytes either way. Default 64.
    #[arg(long, value_name = "MIB")]
    stream_above_mib: Option<usize>,
    /// Write safetensors (the default; the only format amalgam writes).
    #[arg(long, overrides_with = "no_safe_serialization")]
    safe_serialization: bool,
    /// Pickle output: not supported yet (refused).
    #[arg(long, overrides_with = "safe_serialization")]
    no_safe_serialization: bool,
    /// Truncating embeddings to the smallest vocabulary: not supported yet (refused).
    #[arg(long, overrides_with = "no_unsafe_truncate_embeddings")]
    unsafe_truncate_embeddings: bool,
    /// Do not truncate embeddings (the default).
    #[arg(long, overrides_with = "unsafe_truncate_embeddings")]
    no_unsafe_truncate_embeddings: bool,
    #[command(flatten)]
    mergekit_only: MergekitOnly,
}

/// mergekit-yaml flags that cannot change what amalgam writes. Hidden from `--help` (they would
/// bury amalgam's own), listed in the README.
#[derive(Args)]
struct MergekitOnly {
    /// LoRA merge cache: mergekit writes each `model+adapter` merged by peft there; amalgam
    /// applies adapters as it streams and caches nothing, so the folder is not used.
    #[arg(long, hide = true, value_name = "DIR")]
    lora_merge_cache: Option<PathBuf>,
    /// The dtype a `model+adapter` model is loaded in for the LoRA merge (mergekit's
    /// `--lora-merge-dtype`); default: the model's config dtype.
    #[arg(long, hide = true, value_name = "DTYPE")]
    lora_merge_dtype: Option<String>,
    /// GPU arithmetic (ignored, with a warning: amalgam computes on the CPU).
    #[arg(long, hide = true, overrides_with = "no_cuda")]
    cuda: bool,
    #[arg(long, hide = true, overrides_with = "cuda")]
    no_cuda: bool,
    /// Device (ignored unless `cpu`, with a warning).
    #[arg(long, hide = true)]
    device: Option<String>,
    /// Keep results on the GPU (ignored, with a warning).
    #[arg(long, hide = true, overrides_with = "no_low_cpu_memory")]
    low_cpu_memory: bool,
    #[arg(long, hide = true, overrides_with = "low_cpu_memory")]
    no_low_cpu_memory: bool,
    /// Read weights to the GPU (ignored, with a warning).
    #[arg(long, hide = true, overrides_with = "no_read_to_gpu")]
    read_to_gpu: bool,
    #[arg(long, hide = true, overrides_with = "read_to_gpu")]
    no_read_to_gpu: bool,
    /// Multi-GPU execution (ignored, with a warning).
    #[arg(long, hide = true, overrides_with = "no_multi_gpu")]
    multi_gpu: bool,
    #[arg(long, hide = true, overrides_with = "multi_gpu")]
    no_multi_gpu: bool,
    /// All the GPU flags at once (ignored, with a warning). mergekit has no `--no-` form.
    #[arg(long, hide = true)]
    gpu_rich: bool,
    /// Lazy unpickler: amalgam always reads `.bin` inputs lazily with its own restricted
    /// unpickler (which also reads the `_rebuild_from_type_v2` files mergekit's lazy unpickler
    /// cannot), so this changes nothing and passes silently.
    #[arg(long, hide = true, overrides_with = "no_lazy_unpickle")]
    lazy_unpickle: bool,
    #[arg(long, hide = true, overrides_with = "lazy_unpickle")]
    no_lazy_unpickle: bool,
    /// Clone tensors before saving: amalgam always writes each tensor's own bytes.
    #[arg(long, hide = true, overrides_with = "no_clone_tensors")]
    clone_tensors: bool,
    #[arg(long, hide = true, overrides_with = "clone_tensors")]
    no_clone_tensors: bool,
    /// Trust remote code: amalgam never runs model code (it reads config.json itself).
    #[arg(long, hide = true, overrides_with = "no_trust_remote_code")]
    trust_remote_code: bool,
    #[arg(long, hide = true, overrides_with = "trust_remote_code")]
    no_trust_remote_code: bool,
    /// Asynchronous shard writing: amalgam always writes as it merges.
    #[arg(long, hide = true, overrides_with = "no_async_write")]
    async_write: bool,
    #[arg(long, hide = true, overrides_with = "async_write")]
    no_async_write: bool,
    /// Writer threads of --async-write: amalgam's writes happen on the merge threads (-j).
    #[arg(long, hide = true)]
    write_threads: Option<usize>,
}

impl MergekitOnly {
    /// The given flags that ask for something amalgam does not do (GPU), for
    /// one warning. The others have no observable effect in mergekit either, for the configs
    /// amalgam accepts, and pass silently.
    fn ignored(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            (self.cuda, "--cuda"),
            (self.low_cpu_memory, "--low-cpu-memory"),
            (self.read_to_gpu, "--read-to-gpu"),
            (self.multi_gpu, "--multi-gpu"),
            (self.gpu_rich, "--gpu-rich"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| f.to_string())
        .collect();
        if let Some(d) = self
            .device
            .as_deref()
            .filter(|d| !d.eq_ignore_ascii_case("cpu"))
        {
            v.push(format!("--device {d}"));
        }
        v
    }
}

#[derive(Args)]
struct UnmixArgs {
    /// Mixtral checkpoint: a folder or a Hub id in the Hugging Face cache.
    src: String,
    /// Output folder (with `--expert all`: a folder holding expert-0 ... expert-N).
    out_path: PathBuf,
    /// Expert index, or `all`.
    #[arg(long)]
    expert: String,
    /// Output dtype (bfloat16, float16, float32); default: the checkpoint's.
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    #[command(flatten)]
    common: Common,
    /// Maximum shard size (see `merge`).
    #[arg(long, default_value = "5B", value_parser = parse_kmb)]
    out_shard_size: u64,
    /// Do not copy tokenizer files.
    #[arg(long)]
    no_copy_tokenizer: bool,
    /// Do not write a model card.
    #[arg(long)]
    no_write_model_card: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The config the model was made with.
    config: PathBuf,
    /// The model folder to check.
    model_path: PathBuf,
    /// The model was made with mergekit's `--lora-merge-dtype DTYPE` (the dtype `model+adapter`
    /// models were loaded in for the LoRA merge).
    #[arg(long, value_name = "DTYPE")]
    lora_merge_dtype: Option<String>,
    /// The model was made with mergekit's --allow-crimes (models of different architectures).
    #[arg(long)]
    allow_crimes: bool,
    /// Which mergekit release's arithmetic (default: the one recorded in the model's index, else 0.1.5).
    #[arg(long, value_parser = parse_compat)]
    mergekit_version: Option<Compat>,
    /// Seed the model was made with (random methods).
    #[arg(long)]
    random_seed: Option<u64>,
    /// Hugging Face hub cache folder (`--transformers-cache` is mergekit's name for it).
    #[arg(long, visible_alias = "transformers-cache", value_name = "DIR")]
    hf_cache: Option<PathBuf>,
    /// Threads.
    #[arg(short = 'j', long = "num-threads")]
    num_threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Turn warnings into errors.
    #[arg(long)]
    strict: bool,
    /// PyTorch threads the model was made with, or `auto`: try the thread counts that can
    /// matter for the model's tensor sizes and report the one that reproduces it.
    #[arg(long, value_name = "N|auto", default_value = "1", value_parser = parse_verify_threads)]
    torch_threads: TorchThreads,
}

/// `--torch-threads N`: a positive thread count.
fn parse_torch_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a thread count (a positive integer)")),
    }
}

/// `--moe-layout fused|per-expert`.
fn parse_moe_layout(s: &str) -> Result<amalgam_engine::MoeLayout, String> {
    match s {
        "fused" => Ok(amalgam_engine::MoeLayout::Fused),
        "per-expert" => Ok(amalgam_engine::MoeLayout::PerExpert),
        _ => Err(format!(
            "`{s}` is not an expert layout: `fused` or `per-expert`"
        )),
    }
}

/// `verify --torch-threads N|auto`.
fn parse_verify_threads(s: &str) -> Result<TorchThreads, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(TorchThreads::Auto);
    }
    parse_torch_threads(s)
        .map(TorchThreads::Fixed)
        .map_err(|e| format!("{e}, or `auto`"))
}

fn parse_compat(s: &str) -> Result<Compat, String> {
    Compat::parse(s).ok_or_else(|| {
        format!("unknown mergekit version `{s}`; amalgam reproduces 0.1.5 and 0.0.4.2")
    })
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match DType::from_mergekit(s) {
        Some(d @ (DType::BF16 | DType::F16 | DType::F32)) => Ok(d),
        _ => Err(format!(
            "unsupported dtype `{s}`; use bfloat16, float16 or float32"
        )),
    }
}

/// mergekit's `parse_kmb`: an integer with an optional K/M/B suffix (powers of 1000).
fn parse_kmb(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1_000u64),
        Some('M') => (&t[..t.len() - 1], 1_000_000),
        Some('B') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("invalid size `{s}`: expected an integer with optional K, M or B suffix (e.g. 5B, 500M)"))
}

fn setup_threads(n: Option<usize>) -> Result<()> {
    if let Some(n) = n {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up the thread pool")?;
    }
    Ok(())
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn run_merge(a: MergeArgs, registry: &Registry) -> Result<()> {
    if a.no_safe_serialization {
        bail!("--no-safe-serialization (pickle output) is not supported yet; amalgam writes safetensors");
    }
    let ignored = a.mergekit_only.ignored();
    if !ignored.is_empty() {
        eprintln!(
            "warning: {} ignored: amalgam streams on the CPU",
            ignored.join(", ")
        );
    }
    if let Some(d) = &a.mergekit_only.lora_merge_cache {
        eprintln!(
            "note: --lora-merge-cache {} is not used: amalgam applies LoRA adapters as it \
             streams and writes no merged copy",
            d.display()
        );
    }
    setup_threads(a.common.num_threads)?;
    let text = std::fs::read_to_string(&a.config).unwrap_or_default();
    if amalgam_config::is_multi_document(&text) {
        return run_multi(&a, registry);
    }
    let (loaded, printed) = load_config(&a.config, a.strict, a.common.mergekit_version, registry)?;
    merge_one(&a, &loaded, &printed, &a.out_path, a.overwrite, registry)
}

/// Merges one config (a file, or one document of a multi-document file) into `out`.
fn merge_one(
    a: &MergeArgs,
    loaded: &amalgam_config::LoadedConfig,
    printed: &[String],
    out: &Path,
    overwrite: bool,
    registry: &Registry,
) -> Result<()> {
    let quiet = a.common.quiet;
    let progress = progress::Progress::new(!quiet);
    // Hub models are fetched here, with a progress bar, once the config is known to be valid
    // (a feature amalgam refuses should not cost a download first); the planner then finds
    // them in the cache.
    let cache = a
        .common
        .hf_cache
        .clone()
        .unwrap_or_else(amalgam_io::hub::cache_dir);
    for r in loaded.config.referenced_models() {
        fetch(&r.path, r.revision.as_deref(), &cache, a.common.quiet)
            .with_context(|| format!("merging {}", a.config.display()))?;
        if let Some(l) = &r.lora {
            fetch_as(
                &l.path,
                l.revision.as_deref(),
                &cache,
                a.common.quiet,
                amalgam_io::download::Files::Adapter,
            )
            .with_context(|| format!("merging {}", a.config.display()))?;
        }
    }
    let lora_merge_dtype = parse_lora_merge_dtype(a.mergekit_only.lora_merge_dtype.as_deref())?;
    let opts = MergeOptions {
        plan: PlanOptions {
            compat: a.common.mergekit_version,
            strict: a.strict,
            base_dir: cwd(),
            hf_cache: a.common.hf_cache.clone(),
            allow_crimes: a.allow_crimes,
            unsafe_truncate_embeddings: a.unsafe_truncate_embeddings
                && !a.no_unsafe_truncate_embeddings,
            // Fetched just above: the planner finds them in the cache.
            hub_fetched: true,
            lora_merge_dtype,
        },
        out_shard_size: Some(a.out_shard_size),
        copy_tokenizer: !a.no_copy_tokenizer,
        write_model_card: !a.no_write_model_card,
        seed: a.random_seed,
        progress: None,
        torch_threads: a.torch_threads,
        moe_layout: a.moe_layout,
        stream_above: a.stream_above_mib.map(|m| m.saturating_mul(1 << 20)),
    };
    // Refuse an occupied output folder before the models are opened: a rerun of a merge is the
    // usual way to meet this, and it should not wait for the plan to say so.
    check_output(out, overwrite)?;
    // Plan first (headers only) so the progress bar knows the total, then run that plan.
    progress.phase("resolving models and planning");
    let plan = amalgam_engine::plan(loaded, registry, &opts.plan)?;
    let target = output::Target::prepare(out, overwrite)?;
    let cb = progress.tensors(
        "merging",
        plan.output_bytes(),
        plan.ops.len(),
        "writing config.json, tokenizer and model card",
    );
    let report = amalgam_engine::merge_plan(
        plan,
        &loaded.text,
        &target.merge_into,
        &MergeOptions {
            progress: cb,
            ..opts
        },
    )?;
    let path = target.commit(report.path.clone())?;
    progress.finish();
    for w in report.warnings.iter().filter(|w| !printed.contains(*w)) {
        eprintln!("warning: {w}");
    }
    if let (Some(seed), None) = (report.seed, a.random_seed) {
        eprintln!("random seed: {seed} (pass --random-seed {seed} to reproduce this run)");
    }
    if !quiet {
        eprintln!(
            "wrote {} tensors ({}) to {} in {}",
            report.tensors,
            human_bytes(report.bytes),
            path.display(),
            progress::format_secs(progress.elapsed().as_secs_f64())
        );
    }
    Ok(())
}

/// Files whose presence (with config.json) marks a finished model folder for `--lazy`, as in
/// mergekit-multi.
const MODEL_FILES: [&str; 4] = [
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
];

/// A multi-document config, as `mergekit-multi CONFIG --intermediate-dir DIR --out-path OUT`:
/// every document is validated first (a mistake in the last one costs no merge), then the merges
/// run in dependency order, each named one into `DIR/<name>` (skipped with `--lazy`, the default,
/// when that folder already holds a model), the unnamed one into OUT_PATH.
fn run_multi(a: &MergeArgs, registry: &Registry) -> Result<()> {
    let Some(dir) = a.intermediate_dir.clone() else {
        bail!(
            "{}: this file holds several YAML documents (a mergekit-multi config): give \
             --intermediate-dir DIR for its named merges, as mergekit-multi requires",
            a.config.display()
        );
    };
    let docs = match amalgam_config::load_documents(&a.config) {
        Ok(d) => d,
        Err(e @ amalgam_config::ConfigError::Invalid { .. }) => {
            return Err(Rendered(e.to_string()).into())
        }
        Err(e) => return Err(e.into()),
    };
    if !docs.iter().any(|d| d.name.is_none()) {
        // mergekit-multi runs such a file too (its --out-path is then unused).
        eprintln!(
            "warning: every document of {} has a `name:`: the merges are written to {} and \
             nothing to {}",
            a.config.display(),
            dir.display(),
            a.out_path.display()
        );
    }
    let outputs: std::collections::BTreeMap<String, String> = docs
        .iter()
        .filter_map(|d| d.name.clone())
        .map(|n| (n.clone(), dir.join(&n).to_string_lossy().into_owned()))
        .collect();
    let order = amalgam_config::order(&docs).map_err(|e| Rendered(e.to_string()))?;
    let mut checked = Vec::new();
    for d in &docs {
        let mut loaded = d.loaded.clone();
        amalgam_config::redirect_models(&mut loaded.config, &outputs);
        loaded.path = Some(a.config.clone());
        let diags = amalgam_config::validate(
            &loaded,
            &registry.infos(),
            a.strict,
            a.common.mergekit_version,
        );
        let rendered: Vec<String> = diags.iter().map(|x| x.render(Some(&a.config))).collect();
        if diags.iter().any(|x| x.severity.refuses()) {
            return Err(Rendered(rendered.join("\n")).into());
        }
        for r in &rendered {
            eprintln!("{r}");
        }
        checked.push((
            loaded,
            diags.into_iter().map(|x| x.message).collect::<Vec<_>>(),
        ));
    }
    let lazy = !a.no_lazy;
    for i in order {
        let (loaded, printed) = &checked[i];
        let name = docs[i].name.as_deref();
        let out = match name {
            Some(n) => dir.join(n),
            None => a.out_path.clone(),
        };
        if let Some(n) = name {
            let done = out.join("config.json").is_file()
                && MODEL_FILES.iter().any(|f| out.join(f).is_file());
            if lazy && done {
                if !a.common.quiet {
                    eprintln!(
                        "{n}: {} already holds a model; skipped (--no-lazy redoes it)",
                        out.display()
                    );
                }
                continue;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let label = name.unwrap_or("final merge");
        if !a.common.quiet {
            eprintln!("{label}: merging into {}", out.display());
        }
        // A named merge redone with --no-lazy replaces its folder, as mergekit-multi does.
        let overwrite = if name.is_some() {
            !lazy || a.overwrite
        } else {
            a.overwrite
        };
        merge_one(a, loaded, printed, &out, overwrite, registry)
            .with_context(|| format!("merge `{label}` of {}", a.config.display()))?;
    }
    Ok(())
}

/// The writer's own check (an occupied folder is refused), made before planning so that the
/// message can name `--overwrite`.
fn check_output(out: &Path, overwrite: bool) -> Result<()> {
    if overwrite {
        return Ok(());
    }
    let occupied = match std::fs::symlink_metadata(out) {
        Err(_) => false,
        Ok(m) if m.is_dir() => std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()),
        Ok(_) => true,
    };
    if occupied {
        bail!(
            "{}: output folder exists and is not empty; choose a new path, remove it, or pass \
             --overwrite to replace it",
            out.display()
        );
    }
    Ok(())
}

/// A progress bar for downloads, in the merge bar's style.
fn download_bar(
    quiet: bool,
    label: &str,
) -> (
    Option<amalgam_io::download::DownloadProgress>,
    Option<indicatif::ProgressBar>,
) {
    if quiet || !std::io::stderr().is_terminal() {
        return (None, None);
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(format!("downloading {label}"));
    let pb2 = pb.clone();
    let f: amalgam_io::download::DownloadProgress = Arc::new(move |done, total| {
        pb2.set_length(total);
        pb2.set_position(done);
    });
    (Some(f), Some(pb))
}

/// Resolves `path@revision` to a folder, downloading a Hub id missing from `cache` (with a
/// progress bar) unless HF_HUB_OFFLINE is set. Local folders are returned as they are.
fn fetch(path: &str, revision: Option<&str>, cache: &Path, quiet: bool) -> Result<PathBuf> {
    fetch_as(
        path,
        revision,
        cache,
        quiet,
        amalgam_io::download::Files::Model,
    )
}

/// [`fetch`] of a model or of a LoRA adapter (which has its own files).
fn fetch_as(
    path: &str,
    revision: Option<&str>,
    cache: &Path,
    quiet: bool,
    kind: amalgam_io::download::Files,
) -> Result<PathBuf> {
    let label = match revision {
        Some(r) => format!("{path}@{r}"),
        None => path.to_string(),
    };
    let (progress, pb) = download_bar(quiet, &label);
    let opts = amalgam_io::download::HubOptions {
        progress,
        ..amalgam_io::download::HubOptions::from_env()
    };
    let r =
        amalgam_io::download::resolve_or_download_as(path, revision, &cwd(), cache, &opts, kind);
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(r?)
}

fn run_download(a: DownloadArgs) -> Result<()> {
    let cache = a
        .hf_cache
        .clone()
        .unwrap_or_else(amalgam_io::hub::cache_dir);
    let mut refs = Vec::new();
    for m in &a.models {
        let p = Path::new(m);
        if p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
            let loaded = amalgam_config::load(p).map_err(|e| anyhow!("{e}"))?;
            refs.extend(loaded.config.referenced_models());
        } else {
            refs.push(
                amalgam_config::ModelRef::parse(m)
                    .map_err(|e| anyhow!("`{m}` is not a model reference: {e}"))?,
            );
        }
    }
    for r in refs {
        if cwd().join(&r.path).is_dir() {
            if !a.quiet {
                eprintln!("{}: local folder, nothing to download", r.path);
            }
            continue;
        }
        let dir = fetch(&r.path, r.revision.as_deref(), &cache, a.quiet)?;
        println!("{} -> {}", r.model_path(), dir.display());
        if let Some(l) = r.lora.as_ref().filter(|l| !cwd().join(&l.path).is_dir()) {
            let dir = fetch_as(
                &l.path,
                l.revision.as_deref(),
                &cache,
                a.quiet,
                amalgam_io::download::Files::Adapter,
            )?;
            println!("{l} -> {}", dir.display());
        }
    }
    Ok(())
}

/// `1.2 GB`, `340 kB`: decimal units, as file managers and the Hub show sizes.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Config diagnostics, already rendered one per line as `file:line:col: error: ...`: printed as
/// they are, without a second `error:` in front.
#[derive(Debug)]
struct Rendered(String);

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rendered {}

/// Loads and validates a config (schema, method, parameters) before any model is opened, so
/// config mistakes are reported with their line and column. Prints warnings; returns the
/// messages printed so later duplicates can be skipped.
fn load_config(
    path: &Path,
    strict: bool,
    compat: Compat,
    registry: &Registry,
) -> Result<(amalgam_config::LoadedConfig, Vec<String>)> {
    let loaded = match amalgam_config::load(path) {
        Ok(l) => l,
        Err(e @ amalgam_config::ConfigError::Invalid { .. }) => {
            return Err(Rendered(e.to_string()).into())
        }
        Err(e) => return Err(e.into()),
    };
    let diags = amalgam_config::validate(&loaded, &registry.infos(), strict, compat);
    let rendered: Vec<String> = diags.iter().map(|d| d.render(Some(path))).collect();
    if diags.iter().any(|d| d.severity.refuses()) {
        // Warnings too, in file order: a "did you mean" on a misspelt key is often the
        // reason for the error that follows, and `validate` shows both.
        return Err(Rendered(rendered.join("\n")).into());
    }
    for r in &rendered {
        eprintln!("{r}");
    }
    Ok((loaded, diags.into_iter().map(|d| d.message).collect()))
}

fn run_methods(registry: &Registry) {
    for m in registry.iter() {
        let info = m.info();
        println!(
            "{}{}",
            info.name,
            if info.random {
                " (random: use --random-seed)"
            } else {
                ""
            }
        );
        for p in &info.params {
            let default = match p.default {
                None => "required".to_string(),
                Some(v) => format!("default {}", fmt_value(v)),
            };
            println!(
                "    {:<20} {:<9} {:<9} {}  {}",
                p.name,
                format!("{:?}", p.scope).to_lowercase(),
                format!("{:?}", p.kind).to_lowercase(),
                default,
                p.doc
            );
        }
    }
}

fn fmt_value(v: amalgam_methods::Value) -> String {
    match v {
        amalgam_methods::Value::Float(f) => f.to_string(),
        amalgam_methods::Value::Int(i) => i.to_string(),
        amalgam_methods::Value::Bool(b) => b.to_string(),
    }
}

fn run_unmix(a: UnmixArgs) -> Result<()> {
    setup_threads(a.common.num_threads)?;
    let cache = a
        .common
        .hf_cache
        .clone()
        .unwrap_or_else(amalgam_io::hub::cache_dir);
    let (path, rev) = match a.src.split_once('@') {
        Some((p, r)) => (p.to_string(), Some(r.to_string())),
        None => (a.src.clone(), None),
    };
    let src = fetch(&path, rev.as_deref(), &cache, a.common.quiet)?;
    let opts = UnmixOptions {
        dtype: a.dtype,
        compat: a.common.mergekit_version,
        out_shard_size: Some(a.out_shard_size),
        copy_tokenizer: !a.no_copy_tokenizer,
        write_model_card: !a.no_write_model_card,
        progress: None,
    };
    let experts: Vec<(usize, PathBuf)> = if a.expert == "all" {
        let n = amalgam_engine::expert_count(&src)?;
        std::fs::create_dir_all(&a.out_path)
            .with_context(|| format!("creating {}", a.out_path.display()))?;
        (0..n)
            .map(|k| (k, a.out_path.join(format!("expert-{k}"))))
            .collect()
    } else {
        let k: usize = a
            .expert
            .parse()
            .map_err(|_| anyhow!("--expert must be a number or `all`, got `{}`", a.expert))?;
        vec![(k, a.out_path.clone())]
    };
    let progress = progress::Progress::new(!a.common.quiet);
    for (k, out) in experts {
        progress.phase(&format!("extracting expert {k}"));
        let p = amalgam_engine::unmix(&src, &out, k, &opts)?;
        if !a.common.quiet {
            progress.note(&format!("expert {k} -> {}", p.display()));
        }
    }
    progress.finish();
    Ok(())
}

/// `--lora-merge-dtype` of merge and verify.
fn parse_lora_merge_dtype(d: Option<&str>) -> Result<Option<amalgam_io::DType>> {
    d.map(|d| {
        amalgam_io::DType::from_mergekit(d).ok_or_else(|| {
            anyhow!("--lora-merge-dtype {d}: not a dtype (float32, bfloat16 or float16)")
        })
    })
    .transpose()
}

fn run_verify(a: VerifyArgs, registry: &Registry) -> Result<bool> {
    setup_threads(a.num_threads)?;
    let progress = progress::Progress::new(!a.json);
    let (loaded, _) = load_config(
        &a.config,
        a.strict,
        a.mergekit_version.unwrap_or_default(),
        registry,
    )?;
    let opts = PlanOptions {
        compat: Compat::default(),
        strict: a.strict,
        base_dir: cwd(),
        hf_cache: a.hf_cache.clone(),
        allow_crimes: a.allow_crimes,
        unsafe_truncate_embeddings: false,
        hub_fetched: false,
        lora_merge_dtype: parse_lora_merge_dtype(a.lora_merge_dtype.as_deref())?,
    };
    // The plan verify will make, made here too (headers only) to tell the tensors the config
    // produces from those only the model has, and to size the work for the user.
    progress.phase("resolving models and planning");
    let compat = a
        .mergekit_version
        .or_else(|| recorded_version(&a.model_path))
        .unwrap_or_default();
    let plan = amalgam_engine::plan(
        &loaded,
        registry,
        &PlanOptions {
            compat,
            ..opts.clone()
        },
    )?;
    let planned: std::collections::HashSet<String> =
        plan.ops.iter().map(|o| o.out_name.clone()).collect();
    // amalgam_engine::verify takes no progress callback yet: a spinner with the elapsed time.
    progress.phase(&format!(
        "recomputing {} tensors ({}) and comparing",
        plan.ops.len(),
        human_bytes(plan.output_bytes())
    ));
    drop(plan);
    let report = amalgam_engine::verify_threads(
        &loaded,
        &a.model_path,
        registry,
        &opts,
        Some(compat),
        a.random_seed,
        a.torch_threads,
    )?;
    progress.finish();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(report.ok());
    }
    let (mut differ, mut extra) = (0usize, 0usize);
    for d in &report.diffs {
        if planned.contains(&d.tensor) {
            differ += 1;
        } else {
            extra += 1;
        }
        match &d.problem {
            Some(p) => println!("DIFF {}: {p}", d.tensor),
            None => println!(
                "DIFF {}: {} of {} elements differ{}",
                d.tensor,
                d.differing_elements,
                d.elements,
                match (d.max_abs_diff, d.max_abs_value) {
                    (Some(m), Some(v)) => format!(", by up to {m:e} (largest |value| {v:e})"),
                    _ => String::new(),
                }
            ),
        }
    }
    let mut summary = format!(
        "{}: {} tensors recomputed with mergekit {} arithmetic, ",
        if report.ok() { "OK" } else { "MISMATCH" },
        report.tensors,
        report.mergekit_version
    );
    if differ == 0 {
        summary.push_str("all identical");
    } else {
        summary.push_str(&format!("{differ} differ"));
    }
    if extra > 0 {
        summary.push_str(&format!(
            "; {extra} more in the model are not produced by the config"
        ));
    }
    if a.torch_threads == TorchThreads::Auto {
        let tried: Vec<String> = report
            .torch_threads_tried
            .iter()
            .map(|t| t.to_string())
            .collect();
        if report.ok() {
            summary.push_str(&format!(
                "; reproduced with --torch-threads {}{}",
                report.torch_threads,
                if report.torch_threads_or_more {
                    " (or more: no tensor splits further)"
                } else {
                    ""
                }
            ));
        } else {
            summary.push_str(&format!(
                "; no torch thread count reproduces it (tried {})",
                tried.join(", ")
            ));
        }
    } else if report.torch_threads > 1 {
        summary.push_str(&format!("; --torch-threads {}", report.torch_threads));
    }
    println!(
        "{summary} ({})",
        progress::format_secs(progress.elapsed().as_secs_f64())
    );
    Ok(report.ok())
}

/// The mergekit version a folder's index records (`metadata.mergekit_version`), which is what
/// `verify` uses when `--mergekit-version` is not given.
fn recorded_version(folder: &Path) -> Option<Compat> {
    let text = std::fs::read_to_string(folder.join("model.safetensors.index.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Compat::parse(v.get("metadata")?.get("mergekit_version")?.as_str()?)
}

/// The message for a failed command: `error: ` once, then the error and its causes, each cause
/// only if its text is not already in what precedes it. (Library errors often embed their
/// source in their own message, `{path}: {source}`, and also report it as their source, so
/// printing the chain as is says everything twice.) Config diagnostics carry their own
/// `file:line:col: error:` prefixes and are printed as they are. Known dead ends get a hint.
fn render_error(e: &anyhow::Error) -> String {
    if let Some(r) = e.chain().find_map(|c| c.downcast_ref::<Rendered>()) {
        return r.0.clone();
    }
    if let Some(c @ amalgam_config::ConfigError::Invalid { .. }) = config_error(e) {
        return c.to_string();
    }
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    let missing = match io_error(e) {
        Some(amalgam_io::Error::Unresolved { reference, looked })
        | Some(amalgam_io::Error::HubOffline { reference, looked }) => Some((reference, looked)),
        Some(amalgam_io::Error::NotFetched {
            reference, looked, ..
        }) => Some((reference, looked)),
        _ => None,
    };
    if let Some((reference, looked)) = missing {
        let id = reference.split('@').next().unwrap_or(reference);
        if looked.contains("models--") {
            // A Hub id that is neither cached nor downloadable from here.
            msg.push_str(&format!(
                "\nhint: point --hf-cache (mergekit's --transformers-cache) at the cache folder \
                 that holds it, or fetch it where the Hub is reachable (`amalgam download {id}`, \
                 `hf download {id}`)"
            ));
        } else {
            // A path: the usual cause is running from another folder than the config expects.
            msg.push_str(
                "\nhint: relative model paths are taken from the working directory, as in \
                 mergekit, not from the config's folder: run amalgam from the folder the \
                 config's paths start from",
            );
        }
    }
    format!("error: {msg}")
}

/// The I/O-layer error in `e`'s chain, also when the engine wraps it transparently (then it
/// is not a link of the chain itself).
fn io_error(e: &anyhow::Error) -> Option<&amalgam_io::Error> {
    e.chain().find_map(|c| {
        c.downcast_ref::<amalgam_io::Error>().or_else(|| {
            match c.downcast_ref::<amalgam_engine::EngineError>() {
                Some(amalgam_engine::EngineError::Io(inner)) => Some(inner),
                _ => None,
            }
        })
    })
}

/// The config error in `e`'s chain, also when the engine wraps it transparently.
fn config_error(e: &anyhow::Error) -> Option<&amalgam_config::ConfigError> {
    e.chain().find_map(|c| {
        c.downcast_ref::<amalgam_config::ConfigError>()
            .or_else(|| match c.downcast_ref::<amalgam_engine::EngineError>() {
                Some(amalgam_engine::EngineError::Config(inner)) => Some(inner),
                _ => None,
            })
    })
}

/// Runs the `amalgam` command line on the process arguments with `registry`'s methods: the
/// whole of a custom binary's `main`.
pub fn main_with(registry: Registry) -> ExitCode {
    install_signal_cleanup();
    run_with_registry(std::env::args_os(), registry)
}

/// Makes SIGINT, SIGTERM and SIGHUP remove the temporary folders of unfinished outputs (which
/// can hold hundreds of megabytes, and were left behind by an interrupted merge), then exit
/// with 128 + the signal number (130, 143, 129), as a shell reports a process killed by it.
/// The signals are received on a thread of their own (`signal-hook`'s iterator), so the
/// cleanup is ordinary code, not async-signal-safe code. Installed by [`main_with`] only: the
/// command line run from tests ([`run_with_registry`]) leaves the process's signals alone.
pub fn install_signal_cleanup() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("amalgam-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let removed = amalgam_io::remove_temp_folders();
                    let name = match sig {
                        SIGINT => "SIGINT",
                        SIGTERM => "SIGTERM",
                        _ => "SIGHUP",
                    };
                    eprintln!(
                        "amalgam: interrupted by {name}; {}",
                        if removed.is_empty() {
                            "nothing to clean up".to_string()
                        } else {
                            format!(
                                "removed the unfinished output ({})",
                                removed
                                    .iter()
                                    .map(|p| amalgam_io::display::safe_path(p).to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    );
                    std::process::exit(128 + sig);
                }
            });
    }
}

/// Runs the `amalgam` command line on `args` (the program name first, as in
/// `std::env::args_os()`) with `registry`'s methods, and returns the exit status, mergekit's
/// convention: 0 success, 1 the command failed (a merge error, an invalid config for
/// `validate`, a mismatch or an error for `verify`), 2 bad usage (an unknown flag, a missing
/// argument: clap's own status). Argument errors and `--help` print as clap does and return its
/// status instead of exiting, so this can be called from tests.
pub fn run_with_registry<I, T>(args: I, registry: Registry) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // Log lines are for people: no timestamps (the bar has the elapsed time), module paths only
    // at -vv, colour only on a terminal without NO_COLOR.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(progress::log_writer)
        .with_ansi(progress::color_enabled())
        .without_time()
        .with_target(cli.verbose >= 2)
        .try_init();
    let result = match cli.command {
        Command::Merge(a) => run_merge(a, &registry).map(|_| true),
        Command::Validate {
            configs,
            strict,
            mergekit_version,
        } => Ok(validate::run(&configs, strict, mergekit_version, &registry)),
        Command::Methods => {
            run_methods(&registry);
            Ok(true)
        }
        Command::Unmix(a) => run_unmix(a).map(|_| true),
        Command::Verify(a) => run_verify(a, &registry),
        Command::Download(a) => run_download(a).map(|_| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{}", render_error(&e));
            ExitCode::from(1)
        }
    }
}

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

use amalgam_engine::{MergeOptions, PlanOptions, UnmixOptions};
use amalgam_io::DType;
use amalgam_methods::{Compat, Registry};
use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgAction, Args, Parser, Subcommand};

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
    Merge(MergeArgs),
    /// Check configs without loading any model; one line per file, exit 0 only if all are valid.
    Validate {
        /// Config files.
        #[arg(required = true)]
        configs: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
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
    /// Hugging Face cache folder, where Hub ids are found and downloaded to (default:
    /// HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long)]
    hf_cache: Option<PathBuf>,
    /// Number of threads (default: all cores).
    #[arg(short = 'j', long = "num-threads")]
    num_threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// The mergekit YAML config.
    config: PathBuf,
    /// Output folder (must not exist or be empty).
    out_path: PathBuf,
    #[command(flatten)]
    common: Common,
    /// Maximum shard size: bytes (elements with --mergekit-version 0.0.4.2), with optional K/M/B suffix.
    #[arg(long, default_value = "5B", value_parser = parse_kmb)]
    out_shard_size: u64,
    /// Copy the tokenizer of the donor model (default on).
    #[arg(long, overrides_with = "no_copy_tokenizer")]
    copy_tokenizer: bool,
    /// Do not copy the tokenizer.
    #[arg(long)]
    no_copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml (default on).
    #[arg(long, overrides_with = "no_write_model_card")]
    write_model_card: bool,
    /// Do not write the model card.
    #[arg(long)]
    no_write_model_card: bool,
    /// Seed for methods that draw random numbers (dare, della...); printed when drawn.
    #[arg(long)]
    random_seed: Option<u64>,
    /// Allow mixing architectures (accepted for compatibility).
    #[arg(long)]
    allow_crimes: bool,
    /// Turn warnings (linear without weights, unknown keys) into mergekit's errors.
    #[arg(long)]
    strict: bool,
    /// Accepted for mergekit compatibility; has no effect (amalgam is always lazy and CPU-only).
    #[arg(long, hide = true)]
    lazy_unpickle: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    cuda: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    low_cpu_memory: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    read_to_gpu: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    multi_gpu: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    gpu_rich: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    async_write: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    clone_tensors: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    trust_remote_code: bool,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    device: Option<String>,
    /// Accepted for mergekit compatibility; has no effect.
    #[arg(long, hide = true)]
    write_threads: Option<usize>,
    /// mergekit's name for --hf-cache (its `cache_dir` for Hub downloads).
    #[arg(long, hide = true)]
    transformers_cache: Option<PathBuf>,
    /// Not supported yet: pickle output.
    #[arg(long, hide = true)]
    no_safe_serialization: bool,
    /// Not supported yet: LoRA inputs.
    #[arg(long, hide = true)]
    lora_merge_cache: Option<PathBuf>,
    /// Not supported yet.
    #[arg(long, hide = true)]
    unsafe_truncate_embeddings: bool,
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
    /// Which mergekit release's arithmetic (default: the one recorded in the model's index, else 0.1.5).
    #[arg(long, value_parser = parse_compat)]
    mergekit_version: Option<Compat>,
    /// Seed the model was made with (random methods).
    #[arg(long)]
    random_seed: Option<u64>,
    /// Hugging Face cache folder.
    #[arg(long)]
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

fn progress(
    quiet: bool,
    total_bytes: Option<u64>,
    tensors: usize,
) -> (
    Option<amalgam_engine::ProgressFn>,
    Option<indicatif::ProgressBar>,
) {
    if quiet || !std::io::stderr().is_terminal() {
        return (None, None);
    }
    let pb = indicatif::ProgressBar::new(total_bytes.unwrap_or(0));
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let pb2 = pb.clone();
    let f: amalgam_engine::ProgressFn = Arc::new(move |b, t| {
        pb2.set_position(b);
        pb2.set_message(format!("{t}/{tensors} tensors"));
    });
    (Some(f), Some(pb))
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn run_merge(a: MergeArgs, registry: &Registry) -> Result<()> {
    if a.no_safe_serialization {
        bail!("--no-safe-serialization (pickle output) is not supported yet; amalgam writes safetensors");
    }
    if a.lora_merge_cache.is_some() {
        bail!("--lora-merge-cache: LoRA inputs are not supported yet");
    }
    if a.unsafe_truncate_embeddings {
        bail!("--unsafe-truncate-embeddings is not supported yet");
    }
    for (on, flag) in [
        (a.lazy_unpickle, "--lazy-unpickle"),
        (a.cuda, "--cuda"),
        (a.low_cpu_memory, "--low-cpu-memory"),
        (a.read_to_gpu, "--read-to-gpu"),
        (a.multi_gpu, "--multi-gpu"),
        (a.gpu_rich, "--gpu-rich"),
        (a.async_write, "--async-write"),
        (a.clone_tensors, "--clone-tensors"),
        (a.trust_remote_code, "--trust-remote-code"),
        (a.device.is_some(), "--device"),
        (a.write_threads.is_some(), "--write-threads"),
    ] {
        if on {
            eprintln!(
                "warning: {flag} does not apply to amalgam (streaming, CPU only) and is ignored"
            );
        }
    }
    setup_threads(a.common.num_threads)?;
    let (loaded, printed) = load_config(&a.config, a.strict, registry)?;
    let hf_cache = a.common.hf_cache.clone().or(a.transformers_cache.clone());
    // Hub models are fetched here, with a progress bar, once the config is known to be valid
    // (a feature amalgam refuses should not cost a download first); the planner then finds
    // them in the cache.
    if let Some((path, key)) = amalgam_config::unsupported_features(&loaded.config)
        .into_iter()
        .next()
    {
        return Err(amalgam_engine::EngineError::Unsupported { path, key })
            .with_context(|| format!("merging {}", a.config.display()));
    }
    let cache = hf_cache.clone().unwrap_or_else(amalgam_io::hub::cache_dir);
    for r in loaded.config.referenced_models() {
        fetch(&r.path, r.revision.as_deref(), &cache, a.common.quiet)
            .with_context(|| format!("merging {}", a.config.display()))?;
    }
    let opts = MergeOptions {
        plan: PlanOptions {
            compat: a.common.mergekit_version,
            strict: a.strict,
            base_dir: cwd(),
            hf_cache,
        },
        out_shard_size: Some(a.out_shard_size),
        copy_tokenizer: !a.no_copy_tokenizer,
        write_model_card: !a.no_write_model_card,
        seed: a.random_seed,
        progress: None,
    };
    // Plan first (headers only) so the progress bar knows the total, then run that plan.
    let plan = amalgam_engine::plan(&loaded, registry, &opts.plan)
        .with_context(|| format!("merging {}", a.config.display()))?;
    let (cb, pb) = progress(a.common.quiet, Some(plan.output_bytes()), plan.ops.len());
    let report = amalgam_engine::merge_plan(
        plan,
        &loaded.text,
        &a.out_path,
        &MergeOptions {
            progress: cb,
            ..opts
        },
    )
    .with_context(|| format!("merging {}", a.config.display()))?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    for w in report.warnings.iter().filter(|w| !printed.contains(w)) {
        eprintln!("warning: {w}");
    }
    if let (Some(seed), None) = (report.seed, a.random_seed) {
        eprintln!("random seed: {seed} (pass --random-seed {seed} to reproduce this run)");
    }
    if !a.common.quiet {
        eprintln!(
            "wrote {} tensors ({} bytes) to {}",
            report.tensors,
            report.bytes,
            report.path.display()
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
    let label = match revision {
        Some(r) => format!("{path}@{r}"),
        None => path.to_string(),
    };
    let (progress, pb) = download_bar(quiet, &label);
    let opts = amalgam_io::download::HubOptions {
        progress,
        ..amalgam_io::download::HubOptions::from_env()
    };
    let r = amalgam_io::download::resolve_or_download(path, revision, &cwd(), cache, &opts);
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
    }
    Ok(())
}

/// Loads and validates a config (schema, method, parameters) before any model is opened, so
/// config mistakes are reported with their line and column. Prints warnings; returns the
/// messages printed so later duplicates can be skipped.
fn load_config(
    path: &Path,
    strict: bool,
    registry: &Registry,
) -> Result<(amalgam_config::LoadedConfig, Vec<String>)> {
    let loaded = amalgam_config::load(path).map_err(|e| anyhow!("{e}"))?;
    let schemas = amalgam_engine::method_schemas(registry);
    let diags = amalgam_config::validate(&loaded, &schemas, strict);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.severity == amalgam_config::Severity::Error)
        .map(|d| d.render(Some(path)))
        .collect();
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    for d in &diags {
        eprintln!("{}", d.render(Some(path)));
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
        let n = count_experts(&src)?;
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
    for (k, out) in experts {
        let p = amalgam_engine::unmix(&src, &out, k, &opts)?;
        if !a.common.quiet {
            eprintln!("expert {k} -> {}", p.display());
        }
    }
    Ok(())
}

fn count_experts(src: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(src.join("config.json"))
        .with_context(|| format!("{}: reading config.json", src.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: config.json", src.display()))?;
    v.get("num_local_experts")
        .and_then(|n| n.as_u64())
        .map(|n| n as usize)
        .ok_or_else(|| {
            anyhow!(
                "{}: config.json has no num_local_experts; is this a Mixtral?",
                src.display()
            )
        })
}

fn run_verify(a: VerifyArgs, registry: &Registry) -> Result<bool> {
    setup_threads(a.num_threads)?;
    let (loaded, _) = load_config(&a.config, a.strict, registry)?;
    let opts = PlanOptions {
        compat: Compat::default(),
        strict: a.strict,
        base_dir: cwd(),
        hf_cache: a.hf_cache.clone(),
    };
    let report = amalgam_engine::verify(
        &loaded,
        &a.model_path,
        registry,
        &opts,
        a.mergekit_version,
        a.random_seed,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report.diffs {
            match &d.problem {
                Some(p) => println!("DIFF {}: {p}", d.tensor),
                None => println!(
                    "DIFF {}: {} of {} elements differ",
                    d.tensor, d.differing_elements, d.elements
                ),
            }
        }
        println!(
            "{}: {} tensors checked with mergekit {} arithmetic, {} differ",
            if report.ok() { "OK" } else { "MISMATCH" },
            report.tensors,
            report.mergekit_version,
            report.diffs.len()
        );
    }
    Ok(report.ok())
}

/// Runs the `amalgam` command line on the process arguments with `registry`'s methods: the
/// whole of a custom binary's `main`.
pub fn main_with(registry: Registry) -> ExitCode {
    run_with_registry(std::env::args_os(), registry)
}

/// Runs the `amalgam` command line on `args` (the program name first, as in
/// `std::env::args_os()`) with `registry`'s methods, and returns the exit status: 0 success,
/// 1 a negative answer (`validate` found an invalid config, `verify` a mismatch), 2 an error.
/// Argument errors and `--help` print as clap does and return its status instead of exiting,
/// so this can be called from tests.
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let result = match cli.command {
        Command::Merge(a) => run_merge(a, &registry).map(|_| true),
        Command::Validate { configs, strict } => Ok(validate::run(&configs, strict, &registry)),
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
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

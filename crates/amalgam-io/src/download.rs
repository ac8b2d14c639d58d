//! Hub ids missing from the cache, downloaded into the Hugging Face cache layout.
//!
//! mergekit users name models by Hub id and expect them to be fetched. amalgam fetches them the
//! way the official clients do, into the layout they read, so Python tools and amalgam share one
//! cache and nothing is downloaded twice:
//!
//! * `GET {endpoint}/api/models/{repo}/revision/{rev}` gives the commit and the file list; every
//!   file is then asked for at that commit, so a branch that moves during the download cannot mix
//!   two commits.
//! * `HEAD {endpoint}/{repo}/resolve/{commit}/{file}` without following redirects gives the
//!   ETag (`X-Linked-Etag` for LFS files, which is the sha256 of the content; `ETag` for small
//!   files, which is the git blob sha1), the size and, for LFS files, the redirect to the
//!   storage. The bytes received are checked against the ETag and refused on mismatch.
//! * The body goes to `blobs/<etag>.incomplete`, resumed with `Range` after an interruption, then
//!   renamed to `blobs/<etag>`; `snapshots/<commit>/<file>` is a relative symlink to it, and
//!   `refs/<rev>` holds the commit.
//!
//! Only what a merge reads is fetched (see [`wanted`]); `.bin` pickles never are (as in
//! mergekit, whose allow-list has no `.bin`; amalgam reads them once they are in the cache).
//! `HF_HUB_OFFLINE=1` never touches the network. Every environment variable is read once, by
//! [`HubOptions::from_env`], so tests and library users can pass everything explicitly.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::Digest as _;

use crate::hub::{is_repo_id, is_safe_revision};
use crate::{Error, Result};

/// The public Hub, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Progress of one [`download`]: bytes on disk so far and bytes to fetch in all, over every file
/// of the repository that was missing. Called from the download threads.
pub type DownloadProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A Hub access token and where it came from (named in error messages, never printed itself).
#[derive(Clone)]
pub struct Token {
    /// The token.
    pub value: String,
    /// `HF_TOKEN`, or the token file's path: said in the error when the Hub refuses the token.
    pub source: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; the token must not.
        write!(f, "Token(from {})", self.source)
    }
}

/// How to reach the Hub. [`HubOptions::from_env`] reads the environment as `huggingface_hub`
/// does; tests build one by hand so nothing depends on the process environment.
#[derive(Clone)]
pub struct HubOptions {
    /// Base URL of the Hub (`HF_ENDPOINT`), without a trailing slash.
    pub endpoint: String,
    /// Bearer token for gated and private repositories.
    pub token: Option<Token>,
    /// Never touch the network (`HF_HUB_OFFLINE`): only the cache is used.
    pub offline: bool,
    /// Files downloaded at the same time.
    pub threads: usize,
    /// Attempts after the first one for connection errors, 5xx and 429 answers.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Socket read/connect timeout (`HF_HUB_DOWNLOAD_TIMEOUT`, seconds).
    pub timeout: Duration,
    /// Called as bytes arrive.
    pub progress: Option<DownloadProgress>,
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token)
            .field("offline", &self.offline)
            .field("threads", &self.threads)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for HubOptions {
    /// The public Hub, no token, online, 4 threads, 5 retries from 1 s.
    fn default() -> Self {
        HubOptions {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            offline: false,
            threads: 4,
            retries: 5,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            progress: None,
        }
    }
}

/// `huggingface_hub`'s truthy spellings of a boolean environment variable.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// The token file: `HF_TOKEN_PATH`, else `HF_HOME/token`, else `~/.cache/huggingface/token`
/// (where `huggingface-cli login` writes it).
pub fn token_path() -> PathBuf {
    if let Some(p) = env("HF_TOKEN_PATH") {
        return PathBuf::from(p);
    }
    if let Some(p) = env("HF_HOME") {
        return PathBuf::from(p).join("token");
    }
    let home = env("HOME")
        .or_else(|| env("USERPROFILE"))
        .unwrap_or_default();
    PathBuf::from(home).join(".cache/huggingface/token")
}

impl HubOptions {
    /// Options from the environment: `HF_ENDPOINT`, `HF_TOKEN` (or the legacy
    /// `HUGGING_FACE_HUB_TOKEN`, or the token file [`token_path`]), `HF_HUB_OFFLINE`,
    /// `HF_HUB_DOWNLOAD_TIMEOUT`.
    pub fn from_env() -> Self {
        let mut o = HubOptions::default();
        if let Some(e) = env("HF_ENDPOINT") {
            o.endpoint = e.trim().trim_end_matches('/').to_string();
        }
        o.offline = env("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v));
        if let Some(t) = env("HF_HUB_DOWNLOAD_TIMEOUT").and_then(|v| v.trim().parse::<f64>().ok()) {
            if t.is_finite() && t > 0.0 {
                o.timeout = Duration::from_secs_f64(t);
            }
        }
        o.token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
            .iter()
            .find_map(|k| {
                env(k).map(|v| Token {
                    value: v.trim().to_string(),
                    source: k.to_string(),
                })
            })
            .or_else(|| {
                let p = token_path();
                let v = fs::read_to_string(&p).ok()?;
                let v = v.trim();
                (!v.is_empty()).then(|| Token {
                    value: v.to_string(),
                    source: p.display().to_string(),
                })
            });
        o
    }
}

/// Whether a repository file is fetched: mergekit's allow-list (`*.safetensors`, `*.json`,
/// `tokenizer.model`; the safetensors index is a `.json`), plus the two tokenizer side files the
/// engine copies into the output (`merges.txt`, `chat_template.jinja`): mergekit gets those
/// through transformers' tokenizer download, so a merge of Hub ids must have them to equal the
/// merge of the same folders. Patterns match the whole path as `fnmatch` does (`*` crosses `/`);
/// plain names only match at the root.
pub fn wanted(file: &str) -> bool {
    file.ends_with(".safetensors")
        || file.ends_with(".json")
        || matches!(
            file,
            "tokenizer.model" | "merges.txt" | "chat_template.jinja"
        )
}

/// A repository path is safe to join under `snapshots/<commit>/`: relative, no `..`, no empty
/// or `.` component, no backslash (which Windows would treat as a separator).
fn safe_file_name(f: &str) -> bool {
    !f.is_empty()
        && !f.starts_with('/')
        && !f.contains('\\')
        && f.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

/// A commit id from the Hub: it names a folder, so it must be a plain name.
fn plain_commit(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Like [`crate::hub::resolve_in`], but a Hub id that is not a local folder is downloaded (or
/// brought up to date with the revision, as `huggingface_hub`'s `snapshot_download` does) into
/// `cache` first, unless `opts.offline`. When the Hub cannot be reached and the cache already has
/// the revision, the cached snapshot is used with a warning, as the Python clients do.
pub fn resolve_or_download(
    path: &str,
    revision: Option<&str>,
    base: &Path,
    cache: &Path,
    opts: &HubOptions,
) -> Result<PathBuf> {
    resolve_or_download_as(path, revision, base, cache, opts, Files::Model)
}

/// What a repository is fetched as, which decides its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// A model: [`wanted`].
    Model,
    /// A PEFT adapter (the `+adapter` of a reference): `adapter_config.json` and
    /// `adapter_model.safetensors`, or `adapter_model.bin` when the repository has no
    /// safetensors (peft's own fallback), see [`wanted_adapter`].
    Adapter,
}

/// Whether an adapter repository file is fetched (see [`Files::Adapter`]); `has_safetensors`
/// says whether the repository has `adapter_model.safetensors`.
pub fn wanted_adapter(file: &str, has_safetensors: bool) -> bool {
    match file {
        "adapter_config.json" | "adapter_model.safetensors" => true,
        "adapter_model.bin" => !has_safetensors,
        _ => false,
    }
}

/// [`resolve_or_download`] of a model or of an adapter ([`Files`]).
pub fn resolve_or_download_as(
    path: &str,
    revision: Option<&str>,
    base: &Path,
    cache: &Path,
    opts: &HubOptions,
    kind: Files,
) -> Result<PathBuf> {
    let local = base.join(path);
    if local.is_dir() || !is_repo_id(path) {
        return crate::hub::resolve_in(path, revision, base, cache);
    }
    if opts.offline {
        return crate::hub::resolve_in(path, revision, base, cache).map_err(|e| match e {
            Error::Unresolved { reference, looked } => Error::HubOffline { reference, looked },
            e => e,
        });
    }
    // With the revision cached, the Hub is asked once for updates, without insisting: an
    // unreachable Hub then costs one failed connection, not the whole retry schedule.
    let cached = crate::hub::resolve_in(path, revision, base, cache).is_ok();
    match download_with(path, revision, cache, opts, !cached, kind) {
        Ok(p) => Ok(p),
        Err(
            e @ (Error::HubNetwork { .. } | Error::HubAccess { .. } | Error::HubNotFound { .. }),
        ) => {
            match crate::hub::resolve_in(path, revision, base, cache) {
                Ok(p) if matches!(e, Error::HubNetwork { .. }) => {
                    tracing::warn!("{e}; using the cached snapshot {}", p.display());
                    Ok(p)
                }
                // The reference may have been meant as a local folder: say where that was
                // looked for too, not only what the Hub answered.
                Err(Error::Unresolved { reference, looked }) => Err(Error::NotFetched {
                    reference,
                    looked,
                    hub: Box::new(e),
                }),
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Downloads what a merge needs of Hub repository `repo` at `revision` (branch, tag or commit;
/// default `main`) into `cache`, and returns the snapshot folder. Files already in the snapshot
/// are not asked for again; a blob another revision already fetched is linked, not downloaded.
/// `refs/<revision>` is written last, so an interrupted download never looks complete offline.
pub fn download(
    repo: &str,
    revision: Option<&str>,
    cache: &Path,
    opts: &HubOptions,
) -> Result<PathBuf> {
    download_with(repo, revision, cache, opts, true, Files::Model)
}

/// [`download`]; `retry_info` false asks for the revision only once.
fn download_with(
    repo: &str,
    revision: Option<&str>,
    cache: &Path,
    opts: &HubOptions,
    retry_info: bool,
    kind: Files,
) -> Result<PathBuf> {
    let rev = revision.unwrap_or("main");
    if !is_repo_id(repo) {
        return Err(Error::Invalid(format!(
            "`{repo}` is not a Hub repository id (`org/name`)"
        )));
    }
    if !is_safe_revision(rev) {
        return Err(Error::Invalid(format!(
            "{repo}: `{rev}` is not a valid revision name"
        )));
    }
    let client = Client::new(opts)?;
    let (commit, siblings) = if retry_info {
        client.repo_info(repo, rev)?
    } else {
        Client::new(&HubOptions {
            retries: 0,
            ..opts.clone()
        })?
        .repo_info(repo, rev)?
    };
    let files: Vec<String> = match kind {
        Files::Model => siblings.iter().filter(|f| wanted(f)).cloned().collect(),
        Files::Adapter => {
            let st = siblings.iter().any(|f| f == "adapter_model.safetensors");
            siblings
                .iter()
                .filter(|f| wanted_adapter(f, st))
                .cloned()
                .collect()
        }
    };
    if kind == Files::Model
        && !files.iter().any(|f| f.ends_with(".safetensors"))
        && siblings.iter().any(|f| f.ends_with(".bin"))
    {
        return Err(Error::PickleOnlyRepo {
            repo: repo.to_string(),
            revision: rev.to_string(),
        });
    }
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = repo_dir.join("snapshots").join(&commit);
    let blobs = repo_dir.join("blobs");
    for d in [&snap, &blobs] {
        fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    // Present means the link resolves: a dangling link (blob removed) is fetched again.
    let missing: Vec<String> = files
        .into_iter()
        .filter(|f| !snap.join(f).is_file())
        .collect();
    let job = Job {
        client: &client,
        repo,
        commit: &commit,
        blobs: &blobs,
        done: AtomicU64::new(0),
        total: AtomicU64::new(0),
    };
    // Metadata first (small requests), so progress knows the total before the first byte.
    let metas = parallel(opts.threads, &missing, |f| job.metadata(f))?;
    // One transfer per blob: two files with the same content must not share a partial file.
    let mut seen = std::collections::HashSet::new();
    let to_fetch: Vec<&Meta> = metas
        .iter()
        .filter(|m| seen.insert(m.etag.as_str()) && !blobs.join(&m.etag).is_file())
        .collect();
    let total: u64 = to_fetch.iter().filter_map(|m| m.size).sum();
    // Bytes an earlier, interrupted run left in `.incomplete` files count as done: the transfer
    // resumes after them.
    let partial: u64 = to_fetch
        .iter()
        .filter_map(|m| {
            let len = fs::metadata(blobs.join(format!("{}.incomplete", m.etag)))
                .ok()?
                .len();
            Some(len.min(m.size.unwrap_or(0)))
        })
        .sum();
    job.total.store(total, Ordering::Relaxed);
    job.done.store(partial, Ordering::Relaxed);
    // config.json and the other small files before the weights: a bad config or a missing
    // tokenizer shows up before gigabytes are fetched.
    let (small, large): (Vec<&Meta>, Vec<&Meta>) = to_fetch
        .into_iter()
        .partition(|m| !m.file.ends_with(".safetensors"));
    for group in [small, large] {
        parallel(opts.threads, &group, |m| job.fetch(m))?;
    }
    for m in &metas {
        link(&snap.join(&m.file), &m.file, &m.etag)?;
    }
    if rev != commit {
        let ref_file = repo_dir.join("refs").join(rev);
        if let Some(parent) = ref_file.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        write_atomic(&ref_file, commit.as_bytes())?;
    }
    Ok(snap)
}

/// Writes `path` through a temporary sibling and a rename, so a reader never sees half a ref.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("amalgam-tmp");
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Runs `f` on every item with up to `threads` threads; the first error stops the others from
/// starting new items and is returned. Results keep the items' order.
fn parallel<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                match f(item) {
                    Ok(r) => {
                        if let Ok(mut v) = results.lock() {
                            v[i] = Some(r);
                        }
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_err.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().ok().flatten() {
        return Err(e);
    }
    let v = results
        .into_inner()
        .map_err(|_| Error::Invalid("a download thread panicked".into()))?;
    v.into_iter()
        .map(|r| r.ok_or_else(|| Error::Invalid("a download thread panicked".into())))
        .collect()
}

/// What the Hub says about one file at the commit.
#[derive(Debug)]
struct Meta {
    file: String,
    /// Normalised (no `W/`, no quotes): the blob's name and its checksum.
    etag: String,
    size: Option<u64>,
    /// Where the bytes are (the storage redirect for LFS files).
    url: String,
}

struct Job<'a> {
    client: &'a Client,
    repo: &'a str,
    commit: &'a str,
    blobs: &'a Path,
    done: AtomicU64,
    total: AtomicU64,
}

/// How a transfer attempt failed: worth retrying (network, 5xx) or not.
enum Attempt {
    Retry(String),
    Fatal(Box<Error>),
}

impl Job<'_> {
    fn metadata(&self, file: &String) -> Result<Meta> {
        let mut url = self.client.url(
            self.repo
                .split('/')
                .chain(["resolve", self.commit])
                .chain(file.split('/')),
        );
        // Relative redirects (a renamed repository) are followed here; an absolute one is the
        // storage location of an LFS file, whose headers are the ones that matter.
        for _ in 0..5 {
            let resp = self.client.call(self.repo, &url, "HEAD", None, file)?;
            let status = resp.status();
            let location = resp.header("location").map(str::to_string);
            if (300..400).contains(&status) {
                if let Some(loc) = location.as_deref().filter(|l| l.starts_with('/')) {
                    url = self.client.join(&url, loc)?;
                    continue;
                }
            }
            let etag = resp
                .header("x-linked-etag")
                .or_else(|| resp.header("etag"))
                .map(normalize_etag)
                .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
                .ok_or_else(|| Error::HubResponse {
                    url: url.clone(),
                    reason: format!("no ETag for `{file}` (is HF_ENDPOINT a Hub?)"),
                })?;
            if let Some(c) = resp.header("x-repo-commit") {
                if c != self.commit {
                    return Err(Error::HubResponse {
                        url: url.clone(),
                        reason: format!(
                            "`{file}` is served from commit {c}, but commit {} was asked for",
                            self.commit
                        ),
                    });
                }
            }
            let size = resp
                .header("x-linked-size")
                .or_else(|| resp.header("content-length"))
                .and_then(|v| v.trim().parse().ok());
            let url = match location {
                Some(loc) if (300..400).contains(&status) => self.client.join(&url, &loc)?,
                _ => url,
            };
            return Ok(Meta {
                file: file.clone(),
                etag,
                size,
                url,
            });
        }
        Err(Error::HubResponse {
            url,
            reason: format!("too many redirects for `{file}`"),
        })
    }

    /// The blob, unless another revision (or an identical file) already brought it.
    fn fetch(&self, m: &&Meta) -> Result<()> {
        let blob = self.blobs.join(&m.etag);
        if !blob.is_file() {
            self.download_blob(m, &blob)?;
        }
        Ok(())
    }

    fn download_blob(&self, m: &Meta, blob: &Path) -> Result<()> {
        let part = self.blobs.join(format!("{}.incomplete", m.etag));
        let mut attempt = 0u32;
        loop {
            match self.try_download(m, &part) {
                Ok(()) => break,
                Err(Attempt::Fatal(e)) => return Err(*e),
                Err(Attempt::Retry(reason)) => {
                    if attempt >= self.client.opts.retries {
                        return Err(Error::HubNetwork {
                            url: m.url.clone(),
                            attempts: attempt + 1,
                            reason,
                        });
                    }
                    tracing::info!("{}: {reason}; retrying", m.file);
                    std::thread::sleep(self.client.backoff(attempt));
                    attempt += 1;
                }
            }
        }
        let (algorithm, actual) = verify(&part, &m.etag).map_err(|e| Error::io(&part, e))?;
        if let Some(actual) = actual {
            let _ = fs::remove_file(&part);
            return Err(Error::ChecksumMismatch {
                repo: self.repo.to_string(),
                file: m.file.clone(),
                algorithm,
                expected: m.etag.clone(),
                actual,
            });
        }
        fs::rename(&part, blob).map_err(|e| Error::io(blob, e))
    }

    /// One GET of the rest of the file into `part`.
    fn try_download(&self, m: &Meta, part: &Path) -> Result<(), Attempt> {
        let io = Attempt::fatal_io(part);
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(part)
            .map_err(&io)?;
        let mut have = f.seek(SeekFrom::End(0)).map_err(&io)?;
        if m.size.is_some_and(|s| have > s) {
            self.restart(&mut f, &mut have).map_err(&io)?;
        }
        if m.size == Some(have) {
            return Ok(());
        }
        let range = (have > 0).then(|| format!("bytes={have}-"));
        let resp = match self
            .client
            .call(self.repo, &m.url, "GET", range.as_deref(), &m.file)
        {
            Ok(r) => r,
            // The server cannot serve the range (the partial file is stale): start over.
            Err(Error::HubHttp { status: 416, .. }) => {
                self.restart(&mut f, &mut have).map_err(&io)?;
                return Err(Attempt::Retry("range not satisfiable".into()));
            }
            // `call` has already retried connection errors and 5xx answers.
            Err(e) => return Err(Attempt::Fatal(Box::new(e))),
        };
        if resp.status() != 206 && have > 0 {
            // A 200 to a range request is the whole file.
            self.restart(&mut f, &mut have).map_err(&io)?;
        }
        let mut body = resp.into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    f.flush().map_err(&io)?;
                    return Err(Attempt::Retry(format!("connection lost: {e}")));
                }
            };
            f.write_all(&buf[..n]).map_err(&io)?;
            have += n as u64;
            self.advance(n as u64);
        }
        f.sync_all().map_err(&io)?;
        match m.size {
            Some(s) if have < s => Err(Attempt::Retry(format!(
                "connection closed after {have} of {s} bytes"
            ))),
            _ => Ok(()),
        }
    }

    /// Empties the partial file and takes its bytes back from the progress.
    fn restart(&self, f: &mut File, have: &mut u64) -> std::io::Result<()> {
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        let _ = self
            .done
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(*have))
            });
        *have = 0;
        self.report();
        Ok(())
    }

    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.report();
    }

    fn report(&self) {
        if let Some(p) = &self.client.opts.progress {
            p(
                self.done.load(Ordering::Relaxed),
                self.total.load(Ordering::Relaxed),
            );
        }
    }
}

impl Attempt {
    fn fatal_io(path: &Path) -> impl Fn(std::io::Error) -> Attempt + '_ {
        move |e| Attempt::Fatal(Box::new(Error::io(path, e)))
    }
}

/// `W/"abc"` and `"abc"` are both `abc`.
fn normalize_etag(e: &str) -> String {
    e.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// Checks `path` against its ETag: 64 hex digits are the sha256 of an LFS file, 40 the git blob
/// sha1 of a small file. Returns the algorithm and, on mismatch, the digest found. An ETag of
/// another shape cannot be checked (a mirror may use its own); that is logged, not refused.
fn verify(path: &Path, etag: &str) -> std::io::Result<(&'static str, Option<String>)> {
    let hex = etag.chars().all(|c| c.is_ascii_hexdigit());
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut feed = |update: &mut dyn FnMut(&[u8])| -> std::io::Result<()> {
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            update(&buf[..n]);
        }
    };
    let (algo, digest) = match etag.len() {
        64 if hex => {
            let mut h = sha2::Sha256::new();
            feed(&mut |b| h.update(b))?;
            ("sha256", to_hex(&h.finalize()))
        }
        40 if hex => {
            let len = fs::metadata(path)?.len();
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            feed(&mut |b| h.update(b))?;
            ("git sha1", to_hex(&h.finalize()))
        }
        _ => {
            tracing::warn!(
                "{}: ETag `{etag}` is neither a sha256 nor a git sha1; the download is not checked",
                path.display()
            );
            return Ok(("none", None));
        }
    };
    let ok = digest.eq_ignore_ascii_case(etag);
    Ok((algo, (!ok).then_some(digest)))
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `snapshots/<commit>/<file>` -> `blobs/<etag>` as a relative symlink (what `huggingface_hub`
/// writes, so the cache can be moved); where symlinks are unavailable, a copy.
fn link(at: &Path, file: &str, etag: &str) -> Result<()> {
    if let Some(parent) = at.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if fs::symlink_metadata(at).is_ok() {
        fs::remove_file(at).map_err(|e| Error::io(at, e))?;
    }
    // From snapshots/<commit>/<dirs of file>/ up to the repository folder.
    let ups = file.split('/').count() + 1;
    let target: PathBuf = std::iter::repeat_n("..", ups)
        .collect::<PathBuf>()
        .join("blobs")
        .join(etag);
    #[cfg(unix)]
    let r = std::os::unix::fs::symlink(&target, at);
    #[cfg(not(unix))]
    let r = at
        .parent()
        .map(|p| p.join(&target))
        .map_or(Ok(()), |blob| fs::copy(blob, at).map(|_| ()));
    r.map_err(|e| Error::io(at, e))
}

/// A transport error without the URL (the message names it once already).
fn transport_reason(t: &ureq::Transport) -> String {
    match (t.message(), std::error::Error::source(t)) {
        (Some(m), Some(src)) => format!("{}: {m}: {src}", t.kind()),
        (Some(m), None) => format!("{}: {m}", t.kind()),
        (None, Some(src)) => format!("{}: {src}", t.kind()),
        (None, None) => t.kind().to_string(),
    }
}

/// A blocking HTTP client for one endpoint and token.
struct Client {
    opts: HubOptions,
    /// Never follows redirects: the metadata are on the Hub's own answer, not the storage's.
    head: ureq::Agent,
    /// Follows redirects, keeping the token only on the same host.
    get: ureq::Agent,
    endpoint: url::Url,
}

impl Client {
    fn new(opts: &HubOptions) -> Result<Self> {
        let endpoint = url::Url::parse(&opts.endpoint).map_err(|e| {
            Error::Invalid(format!("HF_ENDPOINT `{}` is not a URL: {e}", opts.endpoint))
        })?;
        let builder = || {
            ureq::AgentBuilder::new()
                .timeout_connect(opts.timeout)
                .timeout_read(opts.timeout)
                .user_agent(concat!("amalgam/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Client {
            opts: opts.clone(),
            head: builder().redirects(0).build(),
            get: builder()
                .redirects(10)
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .build(),
            endpoint,
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.opts
            .backoff
            .saturating_mul(1u32 << attempt.min(5))
            .min(Duration::from_secs(30))
    }

    /// `{endpoint}/{segments}` with every segment percent-encoded: a revision such as
    /// `refs/pr/1` is one segment (`%2F` inside), a repository id and a file's folders are
    /// several.
    fn url<'s>(&self, segments: impl IntoIterator<Item = &'s str>) -> String {
        let mut u = self.endpoint.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.pop_if_empty().extend(segments);
        }
        u.to_string()
    }

    fn join(&self, base: &str, loc: &str) -> Result<String> {
        url::Url::parse(base)
            .and_then(|b| b.join(loc))
            .map(|u| u.to_string())
            .map_err(|e| Error::HubResponse {
                url: base.to_string(),
                reason: format!("bad redirect `{loc}`: {e}"),
            })
    }

    /// The commit and every file of `repo` at `rev`.
    fn repo_info(&self, repo: &str, rev: &str) -> Result<(String, Vec<String>)> {
        let url = self.url(
            ["api", "models"]
                .into_iter()
                .chain(repo.split('/'))
                .chain(["revision", rev]),
        );
        let what = format!("revision `{rev}`");
        let resp = self.call(repo, &url, "GET", None, &what)?;
        let text = resp.into_string().map_err(|e| Error::HubNetwork {
            url: url.clone(),
            attempts: 1,
            reason: e.to_string(),
        })?;
        let bad = |reason: String| Error::HubResponse {
            url: url.clone(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let sha = v
            .get("sha")
            .and_then(|s| s.as_str())
            .filter(|s| plain_commit(s))
            .ok_or_else(|| bad("no commit `sha`".into()))?
            .to_string();
        let siblings = v
            .get("siblings")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no file list `siblings`".into()))?;
        let mut files = Vec::new();
        for s in siblings {
            let Some(f) = s.get("rfilename").and_then(|f| f.as_str()) else {
                return Err(bad("a `siblings` entry has no `rfilename`".into()));
            };
            if !safe_file_name(f) {
                return Err(bad(format!("unsafe file name `{f}`")));
            }
            files.push(f.to_string());
        }
        Ok((sha, files))
    }

    /// Sends a request, retrying connection errors, 5xx and 429 with backoff; maps 401/403/404
    /// and other errors to messages that name `repo` and `what`. 3xx come back as answers (the
    /// HEAD agent does not follow them).
    fn call(
        &self,
        repo: &str,
        url: &str,
        method: &str,
        range: Option<&str>,
        what: &str,
    ) -> Result<ureq::Response> {
        let agent = if method == "HEAD" {
            &self.head
        } else {
            &self.get
        };
        // The token goes to the Hub only, never to a storage host a redirect points at.
        let same_host = url::Url::parse(url).is_ok_and(|u| {
            u.host_str() == self.endpoint.host_str()
                && u.port_or_known_default() == self.endpoint.port_or_known_default()
        });
        let mut attempt = 0u32;
        loop {
            let mut req = agent.request(method, url);
            if let (Some(t), true) = (&self.opts.token, same_host) {
                req = req.set("Authorization", &format!("Bearer {}", t.value));
            }
            if let Some(r) = range {
                req = req.set("Range", r);
            }
            let reason = match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(status, resp)) => match status {
                    401 | 403 => {
                        return Err(Error::HubAccess {
                            repo: repo.to_string(),
                            status,
                            token_source: self.opts.token.as_ref().map(|t| t.source.clone()),
                        })
                    }
                    404 => {
                        return Err(Error::HubNotFound {
                            repo: repo.to_string(),
                            what: if what.starts_with("revision") {
                                format!("repository or {what}")
                            } else {
                                format!("file `{what}`")
                            },
                            url: url.to_string(),
                        })
                    }
                    429 | 500..=599 => format!("HTTP {status}"),
                    _ => {
                        let mut body = resp.into_string().unwrap_or_default();
                        body.truncate(300);
                        return Err(Error::HubHttp {
                            url: url.to_string(),
                            status,
                            body: body.trim().to_string(),
                        });
                    }
                },
                // A name that does not resolve will not resolve in a few seconds either (and
                // this is what an offline machine answers): fail now, not after the schedule.
                Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::Dns => {
                    return Err(Error::HubNetwork {
                        url: url.to_string(),
                        attempts: attempt + 1,
                        reason: transport_reason(&t),
                    })
                }
                Err(ureq::Error::Transport(t)) => transport_reason(&t),
            };
            if attempt >= self.opts.retries {
                return Err(Error::HubNetwork {
                    url: url.to_string(),
                    attempts: attempt + 1,
                    reason,
                });
            }
            tracing::info!("{url}: {reason}; retrying");
            std::thread::sleep(self.backoff(attempt));
            attempt += 1;
        }
    }
}

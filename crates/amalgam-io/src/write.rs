//! Streaming, positioned safetensors output with mergekit's sharding and index files.
//!
//! mergekit buffers a whole shard of tensors and hands it to `safetensors.torch.save_file`. Here
//! the complete layout is computed before the first tensor exists: shard assignment follows
//! mergekit's rule from the tensors' sizes alone, and each shard's header is exactly the one the
//! Python library would write for those tensors, so every tensor's final offset is known. Tensor
//! bytes can then be written straight to their place, in any order and from any thread, and the
//! memory used does not depend on the model's size.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::display::{safe, safe_path};
use crate::{DType, Error, Result};

/// A tensor the merge will produce: known before any byte is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Output name.
    pub name: String,
    /// Output dtype.
    pub dtype: DType,
    /// Output shape.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Bytes of this tensor (saturating: [`ShardLayout::plan`] rejects sizes that overflow).
    pub fn nbytes(&self) -> u64 {
        self.numel()
            .and_then(|n| n.checked_mul(self.dtype.size() as u64))
            .unwrap_or(u64::MAX)
    }

    /// Number of elements (1 for a 0-d tensor), `None` on overflow.
    fn numel(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    }
}

/// How shards are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRule {
    /// mergekit >= May 2024: the limit counts bytes of the output dtype. A new shard is started
    /// before a tensor when the current one is non-empty, the limit is above 0 and the tensor
    /// would take the shard past the limit (so 0 means "no limit").
    Bytes(u64),
    /// mergekit 0.0.4.2: the limit counts elements. Same rule but without the "limit above 0"
    /// test, exactly as that version: with a limit of 0, once a shard holds an element every
    /// following tensor starts a new shard.
    Elements(u64),
}

/// File naming and index format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexStyle {
    /// mergekit 0.1.5: one shard is `model.safetensors` without index; otherwise numbered shards
    /// and an `indent=2` index with metadata `{total_size, mergekit_version}`.
    Modern,
    /// mergekit 0.0.4.2: always numbered shards and a compact index with metadata
    /// `{mergekit_version, total_size}`.
    Legacy,
}

/// Everything that decides the output layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    /// Split rule and limit (see [`ShardRule`] for what 0 means).
    pub rule: ShardRule,
    /// Naming and index format.
    pub style: IndexStyle,
    /// Written as `mergekit_version` in the index metadata.
    pub mergekit_version: String,
}

/// Name of the index file.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// Where one tensor goes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    shard: usize,
    /// Absolute offset in the shard file (header included).
    offset: u64,
    len: u64,
}

/// One output file.
#[derive(Debug, Clone)]
struct ShardPlan {
    name: String,
    /// The 8-byte length prefix followed by the padded JSON header.
    header: Vec<u8>,
    /// Total file length.
    len: u64,
}

/// The complete, precomputed layout of an output model: which shard holds which tensor at which
/// absolute byte offset, every shard header, and the index text.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    tensors: Vec<PlannedTensor>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    shards: Vec<ShardPlan>,
    index_json: Option<String>,
    total_size: u64,
}

impl ShardLayout {
    /// Plans shards for `tensors`, given in mergekit's save order.
    ///
    /// Fails on a duplicate name or a tensor whose size overflows 64 bits.
    pub fn plan(tensors: Vec<PlannedTensor>, spec: &ShardSpec) -> Result<Self> {
        let mut by_name = HashMap::with_capacity(tensors.len());
        let mut sizes = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::Invalid(format!(
                    "tensor `{}` is planned twice in the output",
                    safe(&t.name)
                )));
            }
            let numel = t.numel();
            let bytes = numel.and_then(|n| n.checked_mul(t.dtype.size() as u64));
            match (numel, bytes) {
                (Some(n), Some(b)) => sizes.push((n, b)),
                _ => {
                    return Err(Error::Invalid(format!(
                        "tensor `{}`: shape {:?} is too large",
                        safe(&t.name),
                        t.shape
                    )))
                }
            }
        }

        // Every offset below is at most the total plus the shard headers: checking the total
        // here (with room for the headers) keeps all later sums in range.
        let headroom = 1u64 << 40;
        if sizes
            .iter()
            .try_fold(headroom, |acc, s| acc.checked_add(s.1))
            .is_none()
        {
            return Err(Error::Invalid(
                "the planned output tensors total more than 2^64 bytes".into(),
            ));
        }

        // Shard assignment, as mergekit's TensorWriter.save_tensor does it.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut current_size = 0u64;
        for (i, &(numel, bytes)) in sizes.iter().enumerate() {
            let (size, limit, check_positive) = match spec.rule {
                ShardRule::Bytes(max) => (bytes, max, true),
                ShardRule::Elements(max) => (numel, max, false),
            };
            if !current.is_empty()
                && (!check_positive || limit > 0)
                && current_size.saturating_add(size) > limit
            {
                groups.push(std::mem::take(&mut current));
                current_size = 0;
            }
            current.push(i);
            current_size = current_size.saturating_add(size);
        }
        if !current.is_empty() {
            groups.push(current);
        }

        let n = groups.len();
        let name_of = |k: usize| match (spec.style, n) {
            (IndexStyle::Modern, 1) => "model.safetensors".to_string(),
            _ => format!("model-{:05}-of-{:05}.safetensors", k + 1, n),
        };
        let mut slots = vec![
            Slot {
                shard: 0,
                offset: 0,
                len: 0
            };
            tensors.len()
        ];
        let mut shards = Vec::with_capacity(n);
        let mut total_size = 0u64;
        for (k, group) in groups.iter().enumerate() {
            let (header, order) = shard_header(&tensors, &sizes, group);
            let mut offset = header.len() as u64;
            for &i in &order {
                let len = sizes.get(i).map_or(0, |s| s.1);
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Slot {
                        shard: k,
                        offset,
                        len,
                    };
                }
                offset += len;
                total_size += len;
            }
            shards.push(ShardPlan {
                name: name_of(k),
                header,
                len: offset,
            });
        }

        let index_json = match spec.style {
            IndexStyle::Modern if n <= 1 => None,
            style => Some(index_text(
                style,
                &spec.mergekit_version,
                total_size,
                tensors.iter().zip(&slots).map(|(t, s)| {
                    let shard = shards.get(s.shard).map_or("", |p| p.name.as_str());
                    (t.name.as_str(), shard)
                }),
            )),
        };
        Ok(ShardLayout {
            tensors,
            slots,
            by_name,
            shards,
            index_json,
            total_size,
        })
    }

    /// Shard file names, in order.
    pub fn shard_names(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.name.clone()).collect()
    }

    /// Index file text (`model.safetensors.index.json`), if this layout has one.
    pub fn index_json(&self) -> Option<String> {
        self.index_json.clone()
    }

    /// Total bytes of tensor data.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Where `name` lives: (shard file name, absolute offset in that file, byte length).
    pub fn locate(&self, name: &str) -> Option<(&str, u64, u64)> {
        let slot = self.slots.get(*self.by_name.get(name)?)?;
        let shard = self.shards.get(slot.shard)?;
        Some((shard.name.as_str(), slot.offset, slot.len))
    }

    /// The planned tensors, in save order.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// The bytes a shard file starts with (length prefix and padded JSON header), by index.
    pub fn shard_header(&self, shard: usize) -> Option<&[u8]> {
        self.shards.get(shard).map(|s| s.header.as_slice())
    }

    /// The total length of a shard file, by index.
    pub fn shard_len(&self, shard: usize) -> Option<u64> {
        self.shards.get(shard).map(|s| s.len)
    }
}

/// The header `safetensors.torch.save_file(tensors, metadata={"format": "pt"})` writes for the
/// tensors of `group`, and the order of their data. The Python library (a Rust core using
/// serde_json) sorts by dtype, largest alignment first, then by name (byte order), lays the data
/// out in that order, serialises compactly with `__metadata__` first, and pads the JSON with
/// spaces to a multiple of 8 bytes.
fn shard_header(
    tensors: &[PlannedTensor],
    sizes: &[(u64, u64)],
    group: &[usize],
) -> (Vec<u8>, Vec<usize>) {
    let mut order: Vec<usize> = group.to_vec();
    let key = |i: usize| {
        tensors
            .get(i)
            .map(|t| (t.dtype.alignment_rank(), t.name.as_str()))
    };
    order.sort_by(|&a, &b| {
        let (ka, kb) = (key(a), key(b));
        match (ka, kb) {
            (Some((da, na)), Some((db, nb))) => db.cmp(&da).then_with(|| na.cmp(nb)),
            _ => std::cmp::Ordering::Equal,
        }
    });
    let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for &i in &order {
        let (Some(t), Some(&(_, len))) = (tensors.get(i), sizes.get(i)) else {
            continue;
        };
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        json.push(',');
        json.push_str(&serde_json::Value::String(t.name.clone()).to_string());
        json.push_str(&format!(
            r#":{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}}"#,
            t.dtype.name(),
            shape.join(","),
            offset,
            offset + len
        ));
        offset += len;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut header = Vec::with_capacity(8 + json.len());
    header.extend_from_slice(&(json.len() as u64).to_le_bytes());
    header.extend_from_slice(json.as_bytes());
    (header, order)
}

/// A string as Python's `json.dump` writes it (`ensure_ascii=True`): `\"`, `\\`, the short
/// escapes `\n \r \t \b \f`, and `\uXXXX` (lowercase, UTF-16 surrogate pairs) for everything
/// outside printable ASCII.
fn py_json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// The index file, byte for byte as the mergekit version of `style` writes it (no trailing
/// newline in either).
fn index_text<'a>(
    style: IndexStyle,
    version: &str,
    total_size: u64,
    weight_map: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let entries: Vec<(String, String)> = weight_map
        .map(|(k, v)| (py_json_str(k), py_json_str(v)))
        .collect();
    match style {
        // json.dump(obj, f, indent=2): separators ",\n" + indent and ": ".
        IndexStyle::Modern => {
            let mut s = format!(
                "{{\n  \"metadata\": {{\n    \"total_size\": {total_size},\n    \"mergekit_version\": {}\n  }},\n  \"weight_map\": ",
                py_json_str(version)
            );
            if entries.is_empty() {
                s.push_str("{}");
            } else {
                s.push_str("{\n");
                let body: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("    {k}: {v}"))
                    .collect();
                s.push_str(&body.join(",\n"));
                s.push_str("\n  }");
            }
            s.push_str("\n}");
            s
        }
        // json.dump(obj, f): separators ", " and ": " on one line.
        IndexStyle::Legacy => {
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!(
                "{{\"metadata\": {{\"mergekit_version\": {}, \"total_size\": {total_size}}}, \"weight_map\": {{{}}}}}",
                py_json_str(version),
                body.join(", ")
            )
        }
    }
}

/// Distinguishes the temporary folders of several writers in one process.
static WRITER_SEQ: AtomicU64 = AtomicU64::new(0);

/// Temporary folders being filled by live writers of this process, for
/// [`remove_temp_folders`].
static LIVE_TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Set by [`remove_temp_folders`]: no writer may (re)create anything after it.
static ABORTING: AtomicBool = AtomicBool::new(false);

/// A temporary folder is named `.<output>.amalgam-tmp-<pid>-<seq>` (easy to tell apart in a
/// listing), or `.amalgam-tmp-<pid>-<seq>` when that would pass [`MAX_NAME_BYTES`] (an output
/// name of 231-255 bytes used to fail with "File name too long"). The marker file inside says
/// which output the folder is for.
const TEMP_PREFIX: &str = ".amalgam-tmp-";

/// The longest file name most file systems allow (ext4, XFS, btrfs, APFS, NTFS in UTF-16
/// units).
const MAX_NAME_BYTES: usize = 255;

/// The marker file inside a temporary folder: the output folder's name, so a later run can
/// recognise a stale folder of the same output. Removed just before the rename, so the output
/// holds only what mergekit writes.
const MARKER: &str = ".amalgam-output-name";

/// Most shard files kept open at once. A model with thousands of shards would otherwise need
/// a file descriptor per shard (the common limit is 1,024); writes go in save order, so a
/// shard is seldom reopened.
pub const MAX_OPEN_SHARDS: usize = 32;

/// Removes the temporary folders of every unfinished [`OutputWriter`] of this process. Meant
/// for a signal handler (SIGINT, SIGTERM, SIGHUP) that exits right after: an interrupted merge
/// then leaves nothing behind. It takes a lock and touches the file system, so it must run on
/// an ordinary thread (as `signal-hook`'s iterator or `ctrlc` call handlers), not inside an
/// async signal handler. After it, writers refuse to create files. Returns the folders
/// removed.
pub fn remove_temp_folders() -> Vec<PathBuf> {
    ABORTING.store(true, Ordering::SeqCst);
    let live = LIVE_TEMPS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut removed = Vec::new();
    for tmp in live {
        // A writer thread may be creating a file while the tree is removed (ENOTEMPTY): retry.
        for _ in 0..5 {
            match std::fs::remove_dir_all(&tmp) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        if !tmp.exists() {
            removed.push(tmp);
        }
    }
    removed
}

fn register_temp(tmp: &Path) {
    LIVE_TEMPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(tmp.to_path_buf());
}

fn unregister_temp(tmp: &Path) {
    LIVE_TEMPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| p != tmp);
}

/// The pid in a temporary folder name made by this module for output `name`:
/// `.<name>.amalgam-tmp-<pid>-<seq>` or `.amalgam-tmp-<pid>-<seq>`. Anything else is not ours.
fn temp_owner(entry: &str, name: &str) -> Option<u32> {
    let rest = entry.strip_prefix(TEMP_PREFIX).or_else(|| {
        entry
            .strip_prefix('.')?
            .strip_prefix(name)?
            .strip_prefix(TEMP_PREFIX)
    })?;
    let (pid, seq) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(seq) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` is certainly gone. Only answered where `/proc` shows processes
/// (Linux); elsewhere nothing is considered dead, so nothing is swept.
fn process_is_dead(pid: u32) -> bool {
    Path::new("/proc/self").exists() && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes temporary folders in `parent` that an earlier, killed run left for the output named
/// `name`: only folders named as this module names them, whose marker file names this output
/// (or whose old-style name contains it), and whose owning process no longer exists. A folder
/// of a run still going, of another output, or not made by amalgam is never touched. Errors
/// are ignored: the sweep is a courtesy, not part of the merge.
pub fn sweep_stale_temps(parent: &Path, name: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return removed;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(entry_name) = file_name.to_str() else {
            continue;
        };
        let Some(pid) = temp_owner(entry_name, name) else {
            continue;
        };
        if pid == std::process::id() || !process_is_dead(pid) {
            continue;
        }
        // A real folder, not a symlink to one.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        // The short form says nothing of its output: the marker must. The long form names it
        // (and folders of runs before the marker existed have none).
        let ours = if entry_name.starts_with(TEMP_PREFIX) {
            std::fs::read(path.join(MARKER)).is_ok_and(|m| m == name.as_bytes())
        } else {
            true
        };
        if ours && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!(
                "removed {}, left by an earlier run that was interrupted",
                safe_path(&path)
            );
            removed.push(path);
        }
    }
    removed
}

/// The shard files currently open, at most [`MAX_OPEN_SHARDS`], least recently used first
/// out. Files are shared (`Arc`) so a write in progress keeps its file open even if it is
/// evicted meanwhile.
#[derive(Debug, Default)]
struct OpenShards {
    /// Shard index -> (file, last use).
    open: HashMap<usize, (Arc<File>, u64)>,
    clock: u64,
}

/// Writes a [`ShardLayout`] into a temporary folder beside the target and renames it into place
/// on [`OutputWriter::finish`]. Tensor bytes may be written from several threads, in any order,
/// in pieces: each write goes to its precomputed offset. Dropping the writer without finishing
/// removes the temporary folder, and so does [`remove_temp_folders`] (for signal handlers).
#[derive(Debug)]
pub struct OutputWriter {
    layout: ShardLayout,
    target: PathBuf,
    tmp: PathBuf,
    files: Mutex<OpenShards>,
    /// Per tensor: the byte ranges written so far, sorted, disjoint and non-adjacent (so a
    /// tensor written front to back in pieces holds a single range).
    written: Vec<Mutex<Vec<(u64, u64)>>>,
    finished: bool,
}

/// What is at an existing path, for the message refusing it as an output.
fn describe_existing(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device (such as /dev/null), not a folder";
        }
        if t.is_block_device() {
            return "a block device, not a folder";
        }
        if t.is_fifo() {
            return "a named pipe, not a folder";
        }
        if t.is_socket() {
            return "a socket, not a folder";
        }
    }
    if t.is_symlink() {
        "a symlink (outputs are not written through symlinks)"
    } else if t.is_file() {
        "a file, not a folder"
    } else {
        "something other than a folder"
    }
}

/// An existing target is acceptable only as an empty folder (it is replaced on finish).
fn check_target(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out, e)),
        Ok(m) if m.is_dir() => {
            let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
            if entries.next().is_none() {
                Ok(())
            } else {
                Err(Error::OutputExists {
                    path: out.into(),
                    what: "a folder that is not empty",
                })
            }
        }
        Ok(m) => Err(Error::OutputExists {
            path: out.into(),
            what: describe_existing(&m),
        }),
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

impl OutputWriter {
    /// Creates the temporary folder and every shard file (header written, data region sized).
    /// Fails with [`crate::Error::OutputExists`] if `out` exists and is not an empty folder.
    /// Stale temporary folders of the same output left by killed runs are removed first
    /// ([`sweep_stale_temps`]).
    pub fn create(out: &Path, layout: ShardLayout) -> Result<Self> {
        check_target(out)?;
        let name = out
            .file_name()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: output path has no folder name",
                    safe_path(out)
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        sweep_stale_temps(&parent, &name);
        let suffix = format!(
            "{}-{}",
            std::process::id(),
            WRITER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let long = format!(".{name}{TEMP_PREFIX}{suffix}");
        let tmp = parent.join(if long.len() <= MAX_NAME_BYTES {
            long
        } else {
            format!("{TEMP_PREFIX}{suffix}")
        });
        if tmp.exists() {
            // Left by a crashed run that had the same pid: it is ours by construction.
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        if ABORTING.load(Ordering::SeqCst) {
            return Err(Error::Invalid("interrupted".into()));
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        register_temp(&tmp);
        let written = layout
            .tensors
            .iter()
            .map(|_| Mutex::new(Vec::new()))
            .collect();
        // Built before the shard files so that an error below removes the folder (Drop).
        let writer = OutputWriter {
            layout,
            target: out.to_path_buf(),
            tmp,
            files: Mutex::new(OpenShards::default()),
            written,
            finished: false,
        };
        let marker = writer.tmp.join(MARKER);
        std::fs::write(&marker, name.as_bytes()).map_err(|e| Error::io(&marker, e))?;
        for (k, shard) in writer.layout.shards.iter().enumerate() {
            let path = writer.tmp.join(&shard.name);
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            write_all_at(&file, &shard.header, 0).map_err(|e| Error::io(&path, e))?;
            file.set_len(shard.len).map_err(|e| Error::io(&path, e))?;
            writer.keep_open(k, Arc::new(file));
        }
        Ok(writer)
    }

    /// Adds an open shard file to the bounded set, closing the least recently used one if the
    /// set is full.
    fn keep_open(&self, shard: usize, file: Arc<File>) {
        let mut open = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if open.open.len() >= MAX_OPEN_SHARDS {
            let oldest = open
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&k, _)| k);
            if let Some(k) = oldest {
                open.open.remove(&k);
            }
        }
        open.clock += 1;
        let now = open.clock;
        open.open.insert(shard, (file, now));
    }

    /// Shard `shard`'s file, reopened if it was closed to stay within [`MAX_OPEN_SHARDS`].
    fn shard_file(&self, shard: usize, name: &str) -> Result<Arc<File>> {
        {
            let mut open = self.files.lock().unwrap_or_else(|p| p.into_inner());
            open.clock += 1;
            let now = open.clock;
            if let Some((file, used)) = open.open.get_mut(&shard) {
                *used = now;
                return Ok(Arc::clone(file));
            }
        }
        let path = self.tmp.join(name);
        // Never `create`: a vanished temporary folder (interrupted run) must stay vanished.
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map(Arc::new)
            .map_err(|e| Error::io(&path, e))?;
        self.keep_open(shard, Arc::clone(&file));
        Ok(file)
    }

    /// The layout being written.
    pub fn layout(&self) -> &ShardLayout {
        &self.layout
    }

    /// The temporary folder being filled (renamed to the target by [`OutputWriter::finish`]).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Writes `bytes` at `offset` bytes into tensor `name`'s data. Thread-safe (positioned write).
    pub fn write_tensor_part(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let i = *self.layout.by_name.get(name).ok_or_else(|| {
            Error::Invalid(format!("tensor `{}` is not in the output plan", safe(name)))
        })?;
        let slot = self
            .layout
            .slots
            .get(i)
            .ok_or_else(|| Error::Invalid(format!("tensor `{}`: no slot", safe(name))))?;
        let end = offset.checked_add(bytes.len() as u64);
        if end.is_none_or(|e| e > slot.len) {
            return Err(Error::Invalid(format!(
                "tensor `{}`: write of {} bytes at offset {offset} exceeds its {} bytes",
                safe(name),
                bytes.len(),
                slot.len
            )));
        }
        let end = offset + bytes.len() as u64;
        let shard = self
            .layout
            .shards
            .get(slot.shard)
            .ok_or_else(|| Error::Invalid(format!("tensor `{}`: shard missing", safe(name))))?;
        let file = self.shard_file(slot.shard, &shard.name)?;
        write_all_at(&file, bytes, slot.offset + offset)
            .map_err(|e| Error::io(self.tmp.join(&shard.name), e))?;
        if let Some(m) = self.written.get(i) {
            let mut ranges = m.lock().unwrap_or_else(|p| p.into_inner());
            add_range(&mut ranges, offset, end);
        }
        Ok(())
    }

    /// Writes the whole of tensor `name`.
    pub fn write_tensor(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_tensor_part(name, 0, bytes)
    }

    /// Checks a side-file name: relative, no `..`, not one of the tensor files.
    fn side_path(&self, rel_name: &str) -> Result<PathBuf> {
        let rel = Path::new(rel_name);
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        if rel_name.is_empty() || !plain {
            return Err(Error::Invalid(format!(
                "side file `{}` must be a relative path inside the output folder",
                safe(rel_name)
            )));
        }
        if rel_name == INDEX_NAME
            || rel_name == MARKER
            || self.layout.shards.iter().any(|s| s.name == rel_name)
        {
            return Err(Error::Invalid(format!(
                "side file `{}` would overwrite a tensor file",
                safe(rel_name)
            )));
        }
        // `create_dir_all` below would recreate a temporary folder that an interrupted run
        // just removed.
        if ABORTING.load(Ordering::SeqCst) || !self.tmp.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: the temporary output folder is gone (interrupted?)",
                safe_path(&self.tmp)
            )));
        }
        let path = self.tmp.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(path)
    }

    /// Writes a side file (config.json, README.md...) into the output folder.
    pub fn write_file(&self, rel_name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.side_path(rel_name)?;
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&path, e))
    }

    /// Copies a file byte for byte into the output folder.
    ///
    /// `src` must resolve inside the folder it is in (for a Hugging Face cache snapshot,
    /// inside the repository folder, where `blobs/` is): a tokenizer file that is a symlink to
    /// `/etc/shadow` or `/proc/self/environ` is refused with
    /// [`crate::Error::SideFileOutsideFolder`] instead of being copied into a folder that is
    /// usually published.
    pub fn copy_file(&self, rel_name: &str, src: &Path) -> Result<()> {
        let folder = match src.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        crate::folder::check_side_file(src, folder)?;
        let path = self.side_path(rel_name)?;
        std::fs::copy(src, &path).map_err(|e| Error::io(src, e))?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&path, e))
    }

    /// Checks every tensor was fully written, writes the index, syncs, and renames the temporary
    /// folder to the target. Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        for (i, m) in self.written.iter().enumerate() {
            let (Some(t), Some(slot)) = (self.layout.tensors.get(i), self.layout.slots.get(i))
            else {
                continue;
            };
            let ranges = m.lock().unwrap_or_else(|p| p.into_inner());
            let done: u64 = ranges.iter().map(|(a, b)| b - a).sum();
            if done != slot.len {
                return Err(Error::IncompleteTensor {
                    path: self.target.clone(),
                    tensor: t.name.clone(),
                    written: done,
                    expected: slot.len,
                });
            }
        }
        if let Some(index) = &self.layout.index_json {
            let path = self.tmp.join(INDEX_NAME);
            std::fs::write(&path, index).map_err(|e| Error::io(&path, e))?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
        // Shards closed to bound open files are reopened to be synced: fsync flushes the file,
        // whichever descriptor wrote it.
        for (k, shard) in self.layout.shards.iter().enumerate() {
            let file = self.shard_file(k, &shard.name)?;
            file.sync_all()
                .map_err(|e| Error::io(self.tmp.join(&shard.name), e))?;
        }
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .clear();
        // The marker must not end up in the output (mergekit writes no such file).
        let marker = self.tmp.join(MARKER);
        std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
        sync_dir(&self.tmp)?;
        // The target may have appeared meanwhile; an empty folder is replaced.
        check_target(&self.target)?;
        if self.target.is_dir() {
            std::fs::remove_dir(&self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        if ABORTING.load(Ordering::SeqCst) {
            return Err(Error::Invalid("interrupted".into()));
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.finished = true;
        unregister_temp(&self.tmp);
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
            unregister_temp(&self.tmp);
        }
    }
}

/// Records `[start, end)` as written, keeping the list sorted, disjoint and non-adjacent.
fn add_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let (mut lo, mut hi) = (start, end);
    // Ranges already in the list never touch each other, so only those touching the new range
    // itself can merge with it.
    ranges.retain(|&(a, b)| {
        if b < start || a > end {
            true
        } else {
            lo = lo.min(a);
            hi = hi.max(b);
            false
        }
    });
    let pos = ranges.partition_point(|&(a, _)| a < lo);
    ranges.insert(pos, (lo, hi));
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = buf.get(n..).unwrap_or_default();
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut r = Vec::new();
        add_range(&mut r, 10, 20);
        add_range(&mut r, 0, 5);
        add_range(&mut r, 30, 40);
        assert_eq!(r, [(0, 5), (10, 20), (30, 40)]);
        add_range(&mut r, 5, 10);
        assert_eq!(r, [(0, 20), (30, 40)]);
        add_range(&mut r, 15, 35);
        assert_eq!(r, [(0, 40)]);
        add_range(&mut r, 3, 3);
        assert_eq!(r, [(0, 40)]);
    }

    #[test]
    fn python_json_strings() {
        assert_eq!(
            py_json_str("a\"b\\c\n\u{1}\u{7f}é😀"),
            r#""a\"b\\c\n\u0001\u007f\u00e9\ud83d\ude00""#
        );
    }
}

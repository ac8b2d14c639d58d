//! `torch.save` checkpoints (`pytorch_model.bin`), read without running any code.
//!
//! The format (torch >= 1.6): a zip archive whose members are stored uncompressed under one
//! top-level folder (the file's stem): `<prefix>/data.pkl`, a pickle of the state dict in which
//! each tensor's storage is a persistent id `('storage', type, key, location, numel)`, and
//! `<prefix>/data/<key>`, that storage's raw little-endian bytes. So once the pickle has been
//! decoded by [`crate::unpickle`] (which refuses every global a state dict does not need), each
//! contiguous tensor is a byte range of the file, served through [`SafetensorsFile`] exactly as a
//! safetensors tensor: mapped, read with positioned reads, never loaded whole.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::unpickle::{self, PickleError, PickledTensor};
use crate::zipdir::{self, Member};
use crate::{Error, Result, SafetensorsFile, TensorInfo};

/// Magic number a legacy (non-zip) `torch.save` file starts with, after its pickle protocol
/// opcode: `\x80\x02` then `LONG1` 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 12] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8,
];

impl SafetensorsFile {
    /// Opens a `torch.save` archive (`pytorch_model.bin`) and validates every tensor of its
    /// state dict before handing any out.
    ///
    /// Refused, each with its own error: a legacy non-zip file ([`Error::LegacyTorch`]); a
    /// truncated or malformed zip, or compressed members ([`Error::TorchZip`]); a pickle naming a
    /// global outside the allow-list ([`Error::PickleGlobal`]) or using opcodes a state dict does
    /// not ([`Error::Pickle`]); a tensor that is not contiguous, whose storage is missing, or
    /// that (or whose declared storage) reaches past the archive member ([`Error::TorchTensor`]).
    /// Entries of the state dict that are not tensors are skipped with a warning.
    pub fn open_torch(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let zip_err = |reason: String| Error::TorchZip {
            path: path.clone(),
            reason,
        };
        if len < 22 {
            // Checked before mapping: an empty file cannot be mapped.
            return Err(zip_err(format!(
                "{len} bytes is too short for a zip archive"
            )));
        }
        // SAFETY: as in `SafetensorsFile::open`: a read-only MAP_SHARED mapping, never written
        // through; another process writing or truncating the file could change or fault the
        // pages, the accepted risk of every mmap-based model loader. Every offset derived from
        // the archive is checked against the mapping's length before use.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let tensors = parse(&path, &mmap)?;
        Ok(SafetensorsFile::from_validated(path, file, mmap, tensors))
    }
}

/// Whether `bytes` start like a zip archive.
fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The validated tensor table of a `torch.save` archive held in `bytes` (the whole file).
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<TensorInfo>> {
    let zip_err = |reason: String| Error::TorchZip {
        path: path.to_path_buf(),
        reason,
    };
    if !is_zip(bytes) {
        // Legacy files are a pickle with a magic number; the oldest ones are tar archives.
        let tar = bytes.get(257..262) == Some(b"ustar");
        if bytes.starts_with(&LEGACY_MAGIC) || tar || bytes.starts_with(&[0x80, 0x02]) {
            return Err(Error::LegacyTorch {
                path: path.to_path_buf(),
            });
        }
        return Err(zip_err("not a zip archive (no PK signature)".into()));
    }
    let members = zipdir::members(bytes).map_err(zip_err)?;
    let mut pickles = members
        .keys()
        .filter_map(|n| n.strip_suffix("/data.pkl").filter(|p| !p.contains('/')));
    let (Some(prefix), None) = (pickles.next(), pickles.next()) else {
        return Err(zip_err(
            "expected exactly one `<name>/data.pkl` member (a torch.save archive has one)".into(),
        ));
    };
    let prefix = prefix.to_string();
    let stored = |name: &str| -> Result<Member> {
        let m = members
            .get(name)
            .ok_or_else(|| zip_err(format!("no member `{name}`")))?;
        if m.method != 0 {
            return Err(zip_err(format!(
                "member `{name}` is compressed (method {}); torch.save stores members \
                 uncompressed, so the file was repacked: unzip and re-zip it with `zip -0`, or \
                 re-save it with torch",
                m.method
            )));
        }
        Ok(*m)
    };
    let pkl = stored(&format!("{prefix}/data.pkl"))?;
    let pkl_bytes = range(bytes, pkl.start, pkl.len).ok_or_else(|| zip_err("data.pkl".into()))?;
    let sd = unpickle::state_dict(pkl_bytes).map_err(|e| match e {
        PickleError::Global { module, name } => Error::PickleGlobal {
            path: path.to_path_buf(),
            global: format!("{module}.{name}"),
        },
        PickleError::Malformed { offset, reason } => Error::Pickle {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        },
    })?;
    if !sd.skipped.is_empty() {
        tracing::warn!(
            "{}: skipped {} entries of the state dict that are not tensors: {}",
            crate::display::safe_path(path),
            sd.skipped.len(),
            crate::display::safe(&sd.skipped.join(", "))
        );
    }
    let mut out = Vec::with_capacity(sd.tensors.len());
    for (name, t) in sd.tensors {
        let bad = |reason: String| Error::TorchTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        let member_name = format!("{prefix}/data/{}", t.key);
        let member = stored(&member_name).map_err(|_| {
            bad(format!(
                "its storage `{}` is not a stored member of the archive",
                t.key
            ))
        })?;
        let (start, end) = locate(&t, member).map_err(bad)?;
        out.push(TensorInfo {
            name,
            dtype: t.dtype,
            // `locate` checked that every dimension fits in usize.
            shape: t.shape.iter().map(|&d| d as usize).collect::<Vec<usize>>(),
            start,
            end,
        });
    }
    Ok(out)
}

/// The absolute byte range of tensor `t` in the file, given its storage's archive member.
fn locate(t: &PickledTensor, member: Member) -> std::result::Result<(usize, usize), String> {
    let declared = t
        .storage_numel
        .checked_mul(t.storage_elem as u64)
        .filter(|&b| b <= member.len)
        .ok_or_else(|| {
            format!(
                "its storage `{}` declares {} elements of {} bytes, but the archive member holds \
                 {} bytes (truncated or corrupt file)",
                t.key, t.storage_numel, t.storage_elem, member.len
            )
        })?;
    if t.shape.len() != t.stride.len() {
        return Err(format!(
            "shape {:?} and stride {:?} have different lengths",
            t.shape, t.stride
        ));
    }
    if t.shape.iter().any(|&d| usize::try_from(d).is_err()) {
        return Err(format!("shape {:?} does not fit in memory", t.shape));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", t.shape))?;
    if numel > 0 {
        // Row-major contiguity, as torch's `is_contiguous`: dims of size 1 may have any stride.
        let mut expected: u64 = 1;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            if d != 1 && u64::try_from(s).ok() != Some(expected) {
                return Err(format!(
                    "strided (non-contiguous) tensor: shape {:?}, stride {:?}; not supported \
                     (save it with `.contiguous()`, or convert the model to safetensors)",
                    t.shape, t.stride
                ));
            }
            expected = expected.saturating_mul(d);
        }
    }
    let es = t.dtype.size() as u64;
    let begin = t.offset.checked_mul(es);
    let end = begin.and_then(|b| numel.checked_mul(es).and_then(|n| b.checked_add(n)));
    let (Some(begin), Some(end)) = (begin, end) else {
        return Err("storage offset and size overflow".into());
    };
    if end > declared {
        return Err(format!(
            "bytes {begin}..{end} of storage `{}` lie past its {declared} bytes",
            t.key
        ));
    }
    // Inside the member, which `zipdir` checked lies inside the file (and so in memory).
    let start = usize::try_from(member.start + begin).map_err(|e| e.to_string())?;
    let stop = usize::try_from(member.start + end).map_err(|e| e.to_string())?;
    Ok((start, stop))
}

fn range(bytes: &[u8], start: u64, len: u64) -> Option<&[u8]> {
    let s = usize::try_from(start).ok()?;
    let e = usize::try_from(start.checked_add(len)?).ok()?;
    bytes.get(s..e)
}

/// Opens a shard with the reader its name calls for, as mergekit's `TensorLoader.get` does:
/// `.safetensors` as safetensors, anything else as a `torch.save` archive.
pub(crate) fn open_shard(path: &Path) -> Result<SafetensorsFile> {
    let st = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if st {
        SafetensorsFile::open(path)
    } else {
        SafetensorsFile::open_torch(path)
    }
}

//! The central directory of a zip archive, as `torch.save` writes it.
//!
//! Hand-written rather than the `zip` crate on purpose: amalgam needs nothing from an archive but
//! the absolute byte range of each *stored* (uncompressed) member, so that a tensor is a slice of
//! the memory-mapped file served by the same positioned reads as a safetensors tensor. The `zip`
//! crate's API is a decompressing `Read` stream per member (its data offset is an
//! implementation detail), and it would bring compression and crypto dependencies we would
//! have to disable. What is parsed here is small: the end-of-central-directory record (and its
//! zip64 form, which torch writes for archives or members past 4 GiB), the central directory
//! entries (with their zip64 extra field), and each member's local header, whose name and
//! extra lengths (torch pads data to 64 bytes there) give where the data starts. Every offset
//! is checked against the file before use; nothing here panics on any input.

use std::collections::HashMap;

/// One stored member: where its bytes are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Absolute offset of the first data byte.
    pub start: u64,
    /// Data length (compressed = uncompressed: stored).
    pub len: u64,
    /// Compression method from the central directory (0 = stored).
    pub method: u16,
}

/// The members of an archive by name, or why the bytes are not a readable zip archive.
pub(crate) fn members(bytes: &[u8]) -> Result<HashMap<String, Member>, String> {
    let eocd = find_eocd(bytes)
        .ok_or("no end-of-central-directory record: the file is truncated or not a zip archive")?;
    let mut count = u64::from(u16_at(bytes, eocd + 10)?);
    let mut cd_size = u64::from(u32_at(bytes, eocd + 12)?);
    let mut cd_off = u64::from(u32_at(bytes, eocd + 16)?);
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        // zip64: a locator just before the record points at the zip64 end record.
        let loc = eocd
            .checked_sub(20)
            .ok_or("zip64 archive without its locator")?;
        if u32_at(bytes, loc)? != 0x0706_4b50 {
            return Err("zip64 archive without its locator".into());
        }
        let rec = to_usize(u64_at(bytes, loc + 8)?)?;
        if u32_at(bytes, rec)? != 0x0606_4b50 {
            return Err("the zip64 end-of-central-directory record is missing".into());
        }
        count = u64_at(bytes, rec + 32)?;
        cd_size = u64_at(bytes, rec + 40)?;
        cd_off = u64_at(bytes, rec + 48)?;
    }
    let cd_end = cd_off
        .checked_add(cd_size)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                "the central directory ({cd_size} bytes at {cd_off}) lies past the end of the \
                 file ({} bytes): truncated",
                bytes.len()
            )
        })?;
    let mut out = HashMap::new();
    let mut p = to_usize(cd_off)?;
    let cd_end = to_usize(cd_end)?;
    // Each entry takes at least 46 bytes, so a hostile count cannot make this loop long.
    for _ in 0..count {
        if p + 46 > cd_end || u32_at(bytes, p)? != 0x0201_4b50 {
            return Err(format!("central directory entry at {p} is corrupt"));
        }
        let method = u16_at(bytes, p + 10)?;
        let mut csize = u64::from(u32_at(bytes, p + 20)?);
        let mut usize_ = u64::from(u32_at(bytes, p + 24)?);
        let name_len = usize::from(u16_at(bytes, p + 28)?);
        let extra_len = usize::from(u16_at(bytes, p + 30)?);
        let comment_len = usize::from(u16_at(bytes, p + 32)?);
        let mut local = u64::from(u32_at(bytes, p + 42)?);
        let name = slice(bytes, p + 46, name_len)?;
        let name = String::from_utf8_lossy(name).into_owned();
        let extra = slice(bytes, p + 46 + name_len, extra_len)?;
        zip64_extra(extra, &mut usize_, &mut csize, &mut local)?;
        p += 46 + name_len + extra_len + comment_len;
        if p > cd_end {
            return Err(format!(
                "central directory entry `{name}` runs past its end"
            ));
        }
        let l = to_usize(local)?;
        if u32_at(bytes, l)? != 0x0403_4b50 {
            return Err(format!(
                "member `{name}`: no local header at offset {local}"
            ));
        }
        let lname = usize::from(u16_at(bytes, l + 26)?);
        let lextra = usize::from(u16_at(bytes, l + 28)?);
        let start = local + 30 + lname as u64 + lextra as u64;
        if method == 0 && csize != usize_ {
            return Err(format!(
                "member `{name}` is stored but its sizes differ ({csize} vs {usize_})"
            ));
        }
        if start
            .checked_add(csize)
            .is_none_or(|e| e > bytes.len() as u64)
        {
            return Err(format!(
                "member `{name}` ({csize} bytes at {start}) lies past the end of the file \
                 ({} bytes): truncated",
                bytes.len()
            ));
        }
        out.insert(
            name,
            Member {
                start,
                len: csize,
                method,
            },
        );
    }
    Ok(out)
}

/// Offset of the end-of-central-directory record: the last signature in the final 64 KiB + 22
/// bytes (the record is 22 bytes plus a comment of up to 65,535).
fn find_eocd(bytes: &[u8]) -> Option<usize> {
    let last = bytes.len().checked_sub(22)?;
    let first = last.saturating_sub(0xFFFF);
    (first..=last)
        .rev()
        .find(|&i| bytes.get(i..i + 4) == Some(&[0x50, 0x4b, 0x05, 0x06]))
}

/// Applies a zip64 extended-information extra field (id 1): it holds, in this order, the
/// uncompressed size, compressed size and local header offset, each only if its 32-bit field is
/// saturated.
fn zip64_extra(extra: &[u8], usz: &mut u64, csz: &mut u64, local: &mut u64) -> Result<(), String> {
    let mut p = 0;
    while p + 4 <= extra.len() {
        let id = u16_at(extra, p)?;
        let len = usize::from(u16_at(extra, p + 2)?);
        let body = slice(extra, p + 4, len)?;
        if id == 1 {
            let mut q = 0;
            for field in [&mut *usz, &mut *csz, &mut *local] {
                if *field == 0xFFFF_FFFF {
                    *field = u64_at(body, q)?;
                    q += 8;
                }
            }
        }
        p += 4 + len;
    }
    Ok(())
}

fn slice(b: &[u8], at: usize, len: usize) -> Result<&[u8], String> {
    at.checked_add(len)
        .and_then(|end| b.get(at..end))
        .ok_or_else(|| format!("{len} bytes at offset {at} lie past the end: truncated"))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    let s = slice(b, at, 2)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    let mut a = [0u8; 4];
    a.copy_from_slice(slice(b, at, 4)?);
    Ok(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    let mut a = [0u8; 8];
    a.copy_from_slice(slice(b, at, 8)?);
    Ok(u64::from_le_bytes(a))
}

fn to_usize(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("offset {v} does not fit in memory"))
}

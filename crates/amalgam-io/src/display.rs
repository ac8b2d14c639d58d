//! Safe display of untrusted text in messages.
//!
//! Tensor names, shard names, file names and refs come from files anyone can publish. Printed
//! raw, an ESC sequence in a tensor name rewrites the user's terminal, a newline forges extra
//! message lines, and a 50 MB name makes a 100 MB error. Every such string goes through
//! [`safe`] (or [`safe_path`]) before it reaches a message: control characters and the Unicode
//! bidirectional overrides are shown escaped (`\u{1b}`), and very long strings are cut in the
//! middle with the number of bytes left out. Ordinary names print unchanged.

use std::fmt;
use std::path::Path;

/// Longest string shown whole, in characters; longer ones keep their start and end.
pub const MAX_CHARS: usize = 300;
/// Characters kept from the start of a cut string.
const HEAD: usize = 200;
/// Characters kept from the end of a cut string.
const TAIL: usize = 60;

/// `s`, ready to be shown: see the module documentation.
pub fn safe(s: &str) -> Safe<'_> {
    Safe(s)
}

/// A path, shown like [`safe`] shows a string (non-UTF-8 bytes as U+FFFD, as `display` does).
pub fn safe_path(p: &Path) -> SafePath<'_> {
    SafePath(p)
}

/// The [`fmt::Display`] of [`safe`].
#[derive(Debug, Clone, Copy)]
pub struct Safe<'a>(&'a str);

/// The [`fmt::Display`] of [`safe_path`].
#[derive(Debug, Clone, Copy)]
pub struct SafePath<'a>(&'a Path);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_safe(f, self.0)
    }
}

impl fmt::Display for SafePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_safe(f, &self.0.to_string_lossy())
    }
}

/// Characters never printed as themselves: C0/C1 controls and DEL (terminal escapes, forged
/// lines), and the bidirectional embeddings, overrides and isolates, which reorder what
/// follows them on screen.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn write_char(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    if needs_escape(c) {
        write!(f, "\\u{{{:x}}}", c as u32)
    } else {
        fmt::Write::write_char(f, c)
    }
}

fn write_safe(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    // Counting stops early: a huge string is never walked twice in full.
    let long = s.chars().nth(MAX_CHARS).is_some();
    if !long {
        return s.chars().try_for_each(|c| write_char(f, c));
    }
    let head_end = s.char_indices().nth(HEAD).map_or(s.len(), |(i, _)| i);
    let tail_start = s
        .char_indices()
        .rev()
        .nth(TAIL - 1)
        .map_or(head_end, |(i, _)| i.max(head_end));
    let (head, rest) = s.split_at(head_end);
    let (cut, tail) = rest.split_at(tail_start - head_end);
    head.chars().try_for_each(|c| write_char(f, c))?;
    write!(f, "[... {} bytes cut ...]", cut.len())?;
    tail.chars().try_for_each(|c| write_char(f, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_unchanged() {
        for s in ["model.layers.0.mlp.up_proj.weight", "é😀 ok", ""] {
            assert_eq!(safe(s).to_string(), s);
        }
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(
            safe("a\u{1b}[2Jb\nc\u{202e}").to_string(),
            "a\\u{1b}[2Jb\\u{a}c\\u{202e}"
        );
    }

    #[test]
    fn long_strings_are_cut() {
        let s = "x".repeat(1_000_000);
        let shown = safe(&s).to_string();
        assert!(shown.len() < 400, "{}", shown.len());
        assert!(shown.contains(&format!("[... {} bytes cut ...]", 1_000_000 - HEAD - TAIL)));
        let exact = "y".repeat(MAX_CHARS);
        assert_eq!(safe(&exact).to_string(), exact);
    }
}

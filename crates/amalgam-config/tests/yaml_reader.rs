//! The YAML reader against hostile or unusual texts (issue 15): deep block nesting, a byte order
//! mark, control characters, very wide mappings, and a seeded mutation fuzz loop.

use std::time::{Duration, Instant};

fn err_text(t: &str) -> String {
    match amalgam_config::parse_str(t) {
        Ok(_) => panic!("accepted: {:?}", t.get(..t.len().min(80))),
        Err(e) => e.to_string(),
    }
}

/// `x:` then 8000 `- ` on one line (16 KB) used to overflow the stack (exit 134): the tree is
/// built recursively. Now the depth bound refuses it with a position.
#[test]
fn deep_block_nesting_is_refused_with_a_position() {
    let t = format!("x:\n{}y\n", "- ".repeat(8000));
    let err = err_text(&t);
    assert!(err.contains("nested more than 200 levels"), "{err}");
    // Line 2, where the 201st list starts.
    assert!(err.contains("2:"), "{err}");
    // Block mappings nest the same way.
    let mut t = String::new();
    for i in 0..1000 {
        t.push_str(&" ".repeat(i));
        t.push_str("k:\n");
    }
    let err = err_text(&t);
    assert!(err.contains("nested more than 200 levels"), "{err}");
}

/// Nesting within the bound still loads (a merge config nests a handful of levels).
#[test]
fn moderate_nesting_loads() {
    let t = format!(
        "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 1.0\nextra: {}1{}\n",
        "[".repeat(150),
        "]".repeat(150)
    );
    amalgam_config::parse_str(&t).expect("150 levels are fine");
}

/// PyYAML skips a byte order mark at the start of the stream; it used to become part of the
/// first key (`\u{feff}merge_method`, an unknown key, and no merge method).
#[test]
fn leading_bom_is_skipped() {
    let plain = "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 1.0\n";
    let with_bom = format!("\u{feff}{plain}");
    let a = amalgam_config::parse_str(plain).expect("plain");
    let b = amalgam_config::parse_str(&with_bom).expect("with a BOM");
    assert_eq!(format!("{:?}", a.config), format!("{:?}", b.config));
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
}

/// PyYAML's reader refuses NUL and the other non-printable characters anywhere in the text,
/// before parsing; the message names the character and its line and column.
#[test]
fn control_characters_are_refused() {
    let err = err_text("merge_method: linear\nmodels:\n  - model: a\u{0}b\n");
    assert!(err.contains("#x0000"), "{err}");
    assert!(err.contains("3:13"), "{err}");
    for c in ['\u{1}', '\u{1b}', '\u{7f}', '\u{9f}', '\u{fffe}'] {
        let err = err_text(&format!("merge_method: linear{c}\n"));
        assert!(err.contains(&format!("#x{:04X}", c as u32)), "{err}");
        assert!(err.contains("1:21"), "{err}");
    }
    // Tab, CR/LF, NEL and the rest of Unicode are fine.
    amalgam_config::parse_str(
        "merge_method: linear\r\nmodels:\r\n  - model: \"a\tb\u{85}é😀\"\r\n    parameters: {weight: 1.0}\r\n",
    )
    .expect("printable characters");
}

/// One mapping of 100k keys: the duplicate check was a scan of the keys seen so far, so this
/// took 34 s (PyYAML: 10 s). Now it is a hash lookup; the bound is loose for slow CI machines.
#[test]
fn wide_mapping_is_linear() {
    let time = |n: usize| {
        let mut t = String::from("merge_method: linear\nparameters:\n");
        for i in 0..n {
            t.push_str(&format!("  k{i}: {i}\n"));
        }
        let start = Instant::now();
        let _ = amalgam_config::parse_str(&t);
        start.elapsed()
    };
    let t100k = time(100_000);
    assert!(t100k < Duration::from_secs(10), "100k keys took {t100k:?}");
    // Duplicates are still found (and still keep the first position, last value).
    let mut t = String::from("merge_method: linear\nparameters:\n");
    for i in 0..20_000 {
        t.push_str(&format!("  k{}: {i}\n", i % 10_000));
    }
    let start = Instant::now();
    let loaded = amalgam_config::parse_str(&t);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    if let Ok(l) = loaded {
        assert!(l.warnings.len() >= 10_000, "{}", l.warnings.len());
    }
}

/// Many anchors and aliases: alias lookup is a hash lookup too.
#[test]
fn many_anchors_are_linear() {
    let mut t = String::from("merge_method: linear\nparameters:\n");
    for i in 0..50_000 {
        t.push_str(&format!("  a{i}: &a{i} {i}\n  b{i}: *a{i}\n"));
    }
    let start = Instant::now();
    let _ = amalgam_config::parse_str(&t);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

/// A small deterministic PRNG (SplitMix64), so the fuzz loop is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 0.5\n  - model: b\n    parameters: {weight: [0, 0.5, 1]}\ndtype: bfloat16\n",
    "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 4]\n      - model: b\n        layer_range: [0, 4]\nmerge_method: slerp\nbase_model: a\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - value: 0.5\n",
    "merge_method: ties\nbase_model: &b org/base@main\nmodels:\n  - model: *b\n  - model: x#expert=3\n    parameters: &p {density: .5, weight: 1e-3}\n  - model: y\n    parameters:\n      <<: *p\n      weight: 0x10\n",
    "merge_method: passthrough\nslices:\n- sources:\n  - {model: a, layer_range: [0, 2]}\n- sources:\n  - {model: a, layer_range: [1, 3]}\ntokenizer_source: union\n? complex\n: !!str 2001-01-01\n",
];

/// Bytes and snippets the mutator splices in: YAML syntax that changes the structure.
const TOKENS: &[&str] = &[
    "- ",
    ": ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "<<: ",
    "!!int ",
    "!!str ",
    "! ",
    "? ",
    "|\n",
    ">-\n",
    "\"",
    "'",
    "\\",
    "#",
    "---\n",
    "...\n",
    "\n",
    "\n  ",
    "\t",
    "\u{feff}",
    "\u{0}",
    "%YAML 1.1\n",
    "~",
    ".inf",
    "0b101",
    "1:20",
    "=",
    "é",
    "\r",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(5) {
            0 if !chars.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 => {
                let tok = TOKENS[rng.below(TOKENS.len())];
                chars.splice(at..at, tok.chars());
            }
            2 if !chars.is_empty() => {
                // Duplicate a run (makes repeated keys, deeper indentation).
                let start = rng.below(chars.len());
                let end = (start + 1 + rng.below(40)).min(chars.len());
                let run: Vec<char> = chars[start..end].to_vec();
                chars.splice(at..at, run);
            }
            3 if !chars.is_empty() => {
                let i = at.min(chars.len() - 1);
                chars[i] = char::from_u32(rng.below(0x80) as u32).unwrap_or(' ');
            }
            _ => {
                let tok = TOKENS[rng.below(TOKENS.len())].repeat(1 + rng.below(300));
                chars.splice(at..at, tok.chars());
            }
        }
    }
    chars.into_iter().collect()
}

/// Seeded mutation fuzzing of the reader (and the schema behind it): every mutated text must
/// give a config or an error, never a panic or a stack overflow. Bounded in time for CI;
/// `bench/fuzz.sh` runs it longer (`AMALGAM_FUZZ_SECS`, `AMALGAM_FUZZ_SEED`).
#[test]
fn fuzz_yaml_reader() {
    let secs: u64 = std::env::var("AMALGAM_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("AMALGAM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let seed_text = SEEDS[rng.below(SEEDS.len())];
        let mut text = seed_text.to_string();
        for _ in 0..1 + rng.below(3) {
            text = mutate(&mut rng, &text);
        }
        let outcome = std::panic::catch_unwind(|| {
            let _ = amalgam_config::parse_str(&text);
        });
        assert!(outcome.is_ok(), "panic on input {text:?}");
        runs += 1;
    }
    assert!(runs > 100, "only {runs} runs");
}

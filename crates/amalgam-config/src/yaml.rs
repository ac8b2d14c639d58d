//! A YAML loader that sees a config the way mergekit does.
//!
//! mergekit reads configs with PyYAML's `safe_load`, which implements YAML **1.1**: `yes`/`on`
//! are booleans, `1e-3` (no dot) is a *string*, `010` is octal, duplicate keys silently keep the
//! last value, and a second document is an error. `serde_yaml` follows YAML 1.2 rules, rejects
//! duplicate keys and does not give the position of every node, so this module builds its own
//! tree from the event stream of `yaml-rust2` (a pure-Rust parser that reports a line and column
//! for every event) and resolves plain scalars with PyYAML's implicit-resolver rules. The
//! positions are what lets every schema error point at a line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the config text (both 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub loc: Location,
}

/// A node's value after PyYAML's (YAML 1.1) resolution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A value PyYAML turns into a Python object mergekit never accepts (a date); kept as its
    /// text for the error message.
    Other {
        what: &'static str,
        text: String,
    },
    Seq(Vec<Node>),
    /// Entries in first-insertion order, duplicates already folded (last value wins).
    Map(Vec<(Node, Node)>),
}

impl Kind {
    /// How the value is described in error messages ("a string", "a list"...).
    pub fn describe(&self) -> String {
        match self {
            Kind::Null => "null".into(),
            Kind::Bool(b) => format!("the boolean `{b}`"),
            Kind::Int(i) => format!("the integer `{i}`"),
            Kind::Float(x) => format!("the number `{}`", crate::params::py_float_repr(*x)),
            Kind::Str(s) => format!("the string {s:?}"),
            Kind::Other { what, text } => format!("{what} `{text}`"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }
}

/// A duplicate mapping key (PyYAML keeps the last value silently; amalgam warns).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Duplicate {
    pub key: String,
    pub first: Location,
    pub again: Location,
    /// Where the mapping holding the key is, so the caller can build a YAML path.
    pub map_loc: Location,
}

/// Why a text is not one YAML document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct YamlError {
    pub loc: Location,
    pub message: String,
}

/// The single document of a config text.
#[derive(Debug)]
pub(crate) struct Document {
    /// `None` for an empty stream (PyYAML returns `None`).
    pub root: Option<Node>,
    pub duplicates: Vec<Duplicate>,
}

fn loc(m: &Marker) -> Location {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Location {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// Most nodes aliases may add to a config, each alias counted at its expanded size. Aliases are
/// copied into the tree, so without a bound a few lines of nested aliases (the "billion laughs"
/// pattern) would exhaust memory; real configs have a few thousand nodes at most. Nodes written
/// out in the text are not limited (the text bounds them).
pub(crate) const MAX_NODES: usize = 1_000_000;

/// Deepest nesting of collections accepted. The tree is built (and dropped) recursively, so
/// without a bound a 16 KB line of `- - - ...` would overflow the stack and abort the process.
/// yaml-rust2 already stops *flow* nesting (`[[[...`) at 255 levels; this bound covers block
/// nesting too. PyYAML's recursive composer gives up a little deeper (Python's recursion
/// limit, about 490 levels); real merge configs nest fewer than ten.
pub(crate) const MAX_DEPTH: usize = 200;

/// Parses `text` as exactly one YAML document.
///
/// As PyYAML does for a `str` (mergekit opens the file as UTF-8 text): one byte order mark at
/// the very start is skipped, and a character PyYAML's reader calls non-printable (NUL and the
/// other control characters but tab and line breaks, U+FFFE, U+FFFF) is an error, raised
/// before any parsing, like its reader does.
pub(crate) fn load(text: &str) -> Result<Document, YamlError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    check_printable(text)?;
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        parser: &mut parser,
        anchors: HashMap::new(),
        duplicates: Vec::new(),
        nodes: 0,
        expanded: 0,
        depth: 0,
    };
    b.stream()
}

/// Whether PyYAML's reader accepts `c` (its `NON_PRINTABLE` set, negated).
fn is_printable(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | '\u{20}'..='\u{7E}' | '\u{85}' | '\u{A0}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// The first character PyYAML's reader refuses, with its position.
fn check_printable(text: &str) -> Result<(), YamlError> {
    let Some((at, c)) = text.char_indices().find(|&(_, c)| !is_printable(c)) else {
        return Ok(());
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    Err(YamlError {
        loc: Location { line, column },
        message: format!(
            "unacceptable character #x{:04X}: control characters are not allowed in YAML \
             (mergekit's loader, PyYAML, rejects them too)",
            c as u32
        ),
    })
}

/// A mapping key reduced to what decides whether two keys are the same one, so duplicates are
/// found with a hash lookup instead of a scan of the keys seen so far (which made a mapping of
/// 100k keys take half a minute). Two keys get the same `KeyId` exactly when their [`Kind`]s
/// compare equal: `0.0` and `-0.0` are one key, and a NaN key equals nothing (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyId {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
    Other(&'static str, String),
}

fn key_id(k: &Kind) -> Option<KeyId> {
    Some(match k {
        Kind::Null => KeyId::Null,
        Kind::Bool(b) => KeyId::Bool(*b),
        Kind::Int(i) => KeyId::Int(*i),
        Kind::Float(x) if x.is_nan() => return None,
        Kind::Float(x) => KeyId::Float(if *x == 0.0 { 0 } else { x.to_bits() }),
        Kind::Str(s) => KeyId::Str(s.clone()),
        Kind::Other { what, text } => KeyId::Other(what, text.clone()),
        Kind::Seq(_) | Kind::Map(_) => return None,
    })
}

struct Builder<'p, 'a> {
    parser: &'p mut Parser<std::str::Chars<'a>>,
    /// Anchored nodes by anchor id (the latest definition wins): (node, its size in nodes).
    anchors: HashMap<usize, (Node, usize)>,
    duplicates: Vec<Duplicate>,
    /// Nodes built so far (see [`MAX_NODES`]).
    nodes: usize,
    /// Of those, the copies made by aliases (see [`MAX_NODES`]).
    expanded: usize,
    /// Collections open around the node being built (see [`MAX_DEPTH`]).
    depth: usize,
}

impl Builder<'_, '_> {
    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        self.parser.next_token().map_err(|e| YamlError {
            loc: loc(e.marker()),
            message: e.info().to_string(),
        })
    }

    fn stream(&mut self) -> Result<Document, YamlError> {
        let mut root = None;
        let mut docs = 0usize;
        loop {
            let (ev, m) = self.next()?;
            match ev {
                Event::StreamStart | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart => {
                    docs += 1;
                    if docs > 1 {
                        return Err(YamlError {
                            loc: loc(&m),
                            message: "this file holds more than one YAML document (`---`), a \
                                      mergekit-multi config: `amalgam merge` runs it with \
                                      --intermediate-dir DIR (library: \
                                      `amalgam_config::load_documents`)"
                                .into(),
                        });
                    }
                    let (ev, m) = self.next()?;
                    root = Some(self.node(ev, m)?);
                    // DocumentEnd
                    let (ev, m) = self.next()?;
                    if ev != Event::DocumentEnd {
                        return Err(YamlError {
                            loc: loc(&m),
                            message: "expected the end of the document".into(),
                        });
                    }
                }
                other => {
                    return Err(YamlError {
                        loc: loc(&m),
                        message: format!("unexpected YAML event {other:?}"),
                    })
                }
            }
        }
        Ok(Document {
            root,
            duplicates: std::mem::take(&mut self.duplicates),
        })
    }

    /// Keeps an anchored node for later aliases; `start` is [`Builder::nodes`] before it was
    /// built, so its size is what it added.
    fn remember(&mut self, anchor: usize, node: &Node, start: usize) {
        if anchor > 0 {
            let size = self.nodes.saturating_sub(start);
            self.anchors.insert(anchor, (node.clone(), size));
        }
    }

    /// Counts `n` more nodes. Only copies made by aliases count against [`MAX_NODES`]: nodes
    /// written out in the text are bounded by its length (a 10^6-value gradient is a valid
    /// config, as for PyYAML), while aliases of aliases grow exponentially ("billion laughs").
    fn count(&mut self, n: usize, alias: bool, at: Location) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if alias {
            self.expanded = self.expanded.saturating_add(n);
        }
        if self.expanded > MAX_NODES {
            return Err(YamlError {
                loc: at,
                message: format!(
                    "aliases expand the config to more than {MAX_NODES} YAML values (`*name` \
                     copies its anchor's value each time it is used); a merge config needs far \
                     fewer: remove the nested aliases"
                ),
            });
        }
        Ok(())
    }

    fn node(&mut self, ev: Event, m: Marker) -> Result<Node, YamlError> {
        let at = loc(&m);
        let start = self.nodes;
        if !matches!(ev, Event::Alias(_)) {
            self.count(1, false, at)?;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let kind = scalar_kind(text, style, tag.as_ref(), at)?;
                let node = Node { kind, loc: at };
                self.remember(anchor, &node, start);
                Ok(node)
            }
            Event::Alias(id) => {
                let unknown = || YamlError {
                    loc: at,
                    message: "unknown alias".into(),
                };
                let size = self
                    .anchors
                    .get(&id)
                    .map(|(_, size)| *size)
                    .ok_or_else(unknown)?;
                // Counted before the copy is made.
                self.count(size, true, at)?;
                self.anchors
                    .get(&id)
                    .map(|(n, _)| Node {
                        kind: n.kind.clone(),
                        loc: at,
                    })
                    .ok_or_else(unknown)
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if self.depth >= MAX_DEPTH {
                    return Err(YamlError {
                        loc: at,
                        message: format!(
                            "lists and mappings are nested more than {MAX_DEPTH} levels deep \
                             here (recursion limit exceeded); a merge config needs a few levels"
                        ),
                    });
                }
                self.depth += 1;
                let node = self.collection(ev, at, start);
                self.depth -= 1;
                node
            }
            other => Err(YamlError {
                loc: at,
                message: format!("unexpected YAML event {other:?}"),
            }),
        }
    }

    /// A sequence or mapping whose start event `ev` was at `at`.
    fn collection(&mut self, ev: Event, at: Location, start: usize) -> Result<Node, YamlError> {
        match ev {
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(ev, m)?);
                }
                // yaml-rust2 marks a block collection where it recognised it (after its first
                // key or item); the first child is a better place to point at.
                let loc = items.first().map_or(at, |n| at.min(n.loc));
                let node = Node {
                    kind: Kind::Seq(items),
                    loc,
                };
                self.remember(anchor, &node, start);
                Ok(node)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries = Entries::default();
                let mut merged = Entries::default();
                let dups_before = self.duplicates.len();
                loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::MappingEnd {
                        break;
                    }
                    let is_merge_key =
                        matches!(&ev, Event::Scalar(t, TScalarStyle::Plain, _, None) if t == "<<");
                    let key = self.node(ev, m)?;
                    let (ev, m) = self.next()?;
                    let value = self.node(ev, m)?;
                    if is_merge_key {
                        merge_into(&mut merged, value)?;
                        continue;
                    }
                    if matches!(key.kind, Kind::Seq(_) | Kind::Map(_)) {
                        return Err(YamlError {
                            loc: key.loc,
                            message: "a mapping key must be a scalar".into(),
                        });
                    }
                    self.insert(&mut entries, key, value, at);
                }
                // YAML merge keys (`<<`): explicit keys win over merged ones.
                let first_key = entries
                    .list
                    .first()
                    .or(merged.list.first())
                    .map(|(k, _)| k.loc);
                let mut all = Vec::new();
                for (k, v) in merged.list {
                    if !entries.contains(&k.kind) {
                        all.push((k, v));
                    }
                }
                all.extend(entries.list);
                let loc = first_key.map_or(at, |k| at.min(k));
                for d in self.duplicates.iter_mut().skip(dups_before) {
                    if d.map_loc == at {
                        d.map_loc = loc;
                    }
                }
                let node = Node {
                    kind: Kind::Map(all),
                    loc,
                };
                self.remember(anchor, &node, start);
                Ok(node)
            }
            other => Err(YamlError {
                loc: at,
                message: format!("unexpected YAML event {other:?}"),
            }),
        }
    }

    fn insert(&mut self, entries: &mut Entries, key: Node, value: Node, map: Location) {
        if let Some(slot) = entries.find_mut(&key.kind) {
            self.duplicates.push(Duplicate {
                key: key_text(&key.kind),
                first: slot.0.loc,
                again: key.loc,
                map_loc: map,
            });
            // Python dicts keep the first position and take the last value.
            slot.1 = value;
        } else {
            entries.push(key, value);
        }
    }
}

/// The entries of a mapping being built, in insertion order, with a hash index of their keys.
#[derive(Default)]
struct Entries {
    list: Vec<(Node, Node)>,
    index: HashMap<KeyId, usize>,
}

impl Entries {
    fn find_mut(&mut self, k: &Kind) -> Option<&mut (Node, Node)> {
        let i = *self.index.get(&key_id(k)?)?;
        self.list.get_mut(i)
    }

    fn contains(&self, k: &Kind) -> bool {
        key_id(k).is_some_and(|id| self.index.contains_key(&id))
    }

    fn push(&mut self, key: Node, value: Node) {
        if let Some(id) = key_id(&key.kind) {
            self.index.insert(id, self.list.len());
        }
        self.list.push((key, value));
    }
}

fn merge_into(merged: &mut Entries, value: Node) -> Result<(), YamlError> {
    let maps = match value.kind {
        Kind::Map(m) => vec![m],
        Kind::Seq(items) => {
            let mut maps = Vec::new();
            for item in items {
                match item.kind {
                    Kind::Map(m) => maps.push(m),
                    _ => {
                        return Err(YamlError {
                            loc: item.loc,
                            message: "a merge key (`<<`) takes a mapping or a list of mappings"
                                .into(),
                        })
                    }
                }
            }
            maps
        }
        _ => {
            return Err(YamlError {
                loc: value.loc,
                message: "a merge key (`<<`) takes a mapping or a list of mappings".into(),
            })
        }
    };
    // In a list of merged mappings the earlier ones win.
    for m in maps {
        for (k, v) in m {
            if !merged.contains(&k.kind) {
                merged.push(k, v);
            }
        }
    }
    Ok(())
}

/// The text of a scalar key, as it appears in paths and messages.
pub(crate) fn key_text(k: &Kind) -> String {
    match k {
        Kind::Str(s) => s.clone(),
        Kind::Null => "null".into(),
        Kind::Bool(b) => if *b { "True" } else { "False" }.into(),
        Kind::Int(i) => i.to_string(),
        Kind::Float(x) => crate::params::py_float_repr(*x),
        Kind::Other { text, .. } => text.clone(),
        Kind::Seq(_) => "[...]".into(),
        Kind::Map(_) => "{...}".into(),
    }
}

fn scalar_kind(
    text: String,
    style: TScalarStyle,
    tag: Option<&Tag>,
    at: Location,
) -> Result<Kind, YamlError> {
    if let Some(tag) = tag {
        let name = if tag.handle == "tag:yaml.org,2002:" {
            tag.suffix.as_str()
        } else if tag.handle == "!" && tag.suffix.is_empty() {
            // `! value`: the non-specific tag forces a string.
            return Ok(Kind::Str(text));
        } else {
            ""
        };
        let resolved = resolve_plain(&text);
        return match (name, resolved) {
            ("str", _) => Ok(Kind::Str(text)),
            ("null", _) => Ok(Kind::Null),
            ("bool", k @ Kind::Bool(_)) => Ok(k),
            ("int", k @ Kind::Int(_)) => Ok(k),
            ("float", k @ Kind::Float(_)) => Ok(k),
            ("float", Kind::Int(i)) => Ok(Kind::Float(i as f64)),
            _ => Err(YamlError {
                loc: at,
                message: format!(
                    "the YAML tag `{}{}` on {text:?} is not supported (mergekit's safe loader \
                     rejects it too)",
                    tag.handle, tag.suffix
                ),
            }),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Kind::Str(text));
    }
    if text == "=" {
        // YAML 1.1's "value" type, which PyYAML's safe loader cannot construct.
        return Err(YamlError {
            loc: at,
            message: "a plain `=` is YAML 1.1's value key, which mergekit's loader rejects; \
                      quote it"
                .into(),
        });
    }
    Ok(resolve_plain(&text))
}

/// PyYAML's implicit resolution of a plain scalar (YAML 1.1 core types).
pub(crate) fn resolve_plain(s: &str) -> Kind {
    if matches!(s, "" | "~" | "null" | "Null" | "NULL") {
        return Kind::Null;
    }
    match s {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Kind::Bool(true)
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Kind::Bool(false)
        }
        _ => {}
    }
    if is_yaml11_float(s) {
        return Kind::Float(construct_float(s));
    }
    if is_yaml11_int(s) {
        return match construct_int(s) {
            Some(i) => Kind::Int(i),
            // Python integers have no size limit; beyond 64 bits the nearest double keeps
            // what matters here (its value as a float parameter).
            None => Kind::Float(
                s.chars()
                    .filter(|&c| c != '_')
                    .collect::<String>()
                    .parse::<f64>()
                    .unwrap_or(f64::NAN),
            ),
        };
    }
    if is_yaml11_timestamp(s) {
        return Kind::Other {
            what: "the date",
            text: s.to_string(),
        };
    }
    Kind::Str(s.to_string())
}

/// A tiny cursor for the hand-written YAML 1.1 patterns below.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, f: impl Fn(u8) -> bool) -> bool {
        match self.peek() {
            Some(c) if f(c) => {
                self.i += 1;
                true
            }
            _ => false,
        }
    }
    fn eat_many(&mut self, f: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.eat(&f) {}
        self.i - start
    }
    fn eat_str(&mut self, s: &str) -> bool {
        if self.b.get(self.i..self.i + s.len()) == Some(s.as_bytes()) {
            self.i += s.len();
            true
        } else {
            false
        }
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

fn digit(c: u8) -> bool {
    c.is_ascii_digit()
}
fn digit_(c: u8) -> bool {
    c.is_ascii_digit() || c == b'_'
}
fn sign(c: u8) -> bool {
    c == b'-' || c == b'+'
}

/// `(:[0-5]?[0-9])+`, the sexagesimal groups of YAML 1.1.
fn sexagesimal_groups(c: &mut Cur) -> bool {
    let mut n = 0;
    loop {
        let save = c.i;
        if !c.eat(|x| x == b':') {
            break;
        }
        // `[0-5]?[0-9]`: try two digits, then one.
        let two = matches!(c.b.get(c.i..c.i + 2), Some([a, b]) if (b'0'..=b'5').contains(a) && b.is_ascii_digit());
        if two {
            c.i += 2;
        } else if !c.eat(digit) {
            c.i = save;
            break;
        }
        n += 1;
    }
    n > 0
}

fn exponent(c: &mut Cur) {
    let save = c.i;
    if c.eat(|x| x == b'e' || x == b'E') && c.eat(sign) && c.eat_many(digit) > 0 {
        return;
    }
    c.i = save;
}

/// YAML 1.1 float (PyYAML): note the dot is mandatory and an exponent needs a sign.
pub(crate) fn is_yaml11_float(s: &str) -> bool {
    let b = s.as_bytes();
    // [-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?
    let alt1 = || {
        let mut c = Cur { b, i: 0 };
        c.eat(sign);
        if !c.eat(digit) {
            return false;
        }
        c.eat_many(digit_);
        if !c.eat(|x| x == b'.') {
            return false;
        }
        c.eat_many(digit_);
        exponent(&mut c);
        c.done()
    };
    // \.[0-9][0-9_]*([eE][-+][0-9]+)?
    let alt2 = || {
        let mut c = Cur { b, i: 0 };
        if !(c.eat(|x| x == b'.') && c.eat(digit)) {
            return false;
        }
        c.eat_many(digit_);
        exponent(&mut c);
        c.done()
    };
    // [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
    let alt3 = || {
        let mut c = Cur { b, i: 0 };
        c.eat(sign);
        if !c.eat(digit) {
            return false;
        }
        c.eat_many(digit_);
        if !sexagesimal_groups(&mut c) || !c.eat(|x| x == b'.') {
            return false;
        }
        c.eat_many(digit_);
        c.done()
    };
    // [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)
    let alt4 = || {
        let mut c = Cur { b, i: 0 };
        c.eat(sign);
        c.eat_str(".") && (c.eat_str("inf") || c.eat_str("Inf") || c.eat_str("INF")) && c.done()
    };
    let alt5 = || matches!(s, ".nan" | ".NaN" | ".NAN");
    alt1() || alt2() || alt3() || alt4() || alt5()
}

/// YAML 1.1 int (PyYAML): binary, octal (leading 0), decimal, hex, sexagesimal.
pub(crate) fn is_yaml11_int(s: &str) -> bool {
    let b = s.as_bytes();
    let with = |f: &dyn Fn(&mut Cur) -> bool| {
        let mut c = Cur { b, i: 0 };
        c.eat(sign);
        f(&mut c) && c.done()
    };
    with(&|c| c.eat_str("0b") && c.eat_many(|x| x == b'0' || x == b'1' || x == b'_') > 0)
        || with(&|c| c.eat_str("0") && c.eat_many(|x| (b'0'..=b'7').contains(&x) || x == b'_') > 0)
        || with(&|c| c.eat_str("0") && c.done())
        || with(&|c| c.eat(|x| (b'1'..=b'9').contains(&x)) && c.eat_many(digit_) < usize::MAX)
        || with(&|c| c.eat_str("0x") && c.eat_many(|x| x.is_ascii_hexdigit() || x == b'_') > 0)
        || with(&|c| {
            c.eat(|x| (b'1'..=b'9').contains(&x)) && {
                c.eat_many(digit_);
                sexagesimal_groups(c)
            }
        })
}

fn is_yaml11_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let mut c = Cur { b, i: 0 };
    let n = |c: &mut Cur, k: usize| (0..k).all(|_| c.eat(digit));
    // YYYY-MM-DD
    if n(&mut c, 4)
        && c.eat(|x| x == b'-')
        && n(&mut c, 2)
        && c.eat(|x| x == b'-')
        && n(&mut c, 2)
        && c.done()
    {
        return true;
    }
    let mut c = Cur { b, i: 0 };
    let ok = n(&mut c, 4)
        && c.eat(|x| x == b'-')
        && c.eat(digit)
        && {
            c.eat(digit);
            c.eat(|x| x == b'-')
        }
        && c.eat(digit)
        && {
            c.eat(digit);
            c.eat(|x| x == b'T' || x == b't') || c.eat_many(|x| x == b' ' || x == b'\t') > 0
        }
        && c.eat(digit)
        && {
            c.eat(digit);
            c.eat(|x| x == b':')
        }
        && n(&mut c, 2)
        && c.eat(|x| x == b':')
        && n(&mut c, 2);
    if !ok {
        return false;
    }
    if c.eat(|x| x == b'.') {
        c.eat_many(digit);
    }
    let save = c.i;
    c.eat_many(|x| x == b' ' || x == b'\t');
    if c.eat(|x| x == b'Z') {
    } else if c.eat(sign) && c.eat(digit) {
        c.eat(digit);
        let s2 = c.i;
        if !(c.eat(|x| x == b':') && n(&mut c, 2)) {
            c.i = s2;
        }
    } else {
        c.i = save;
    }
    c.done()
}

/// PyYAML's `construct_yaml_float`.
fn construct_float(s: &str) -> f64 {
    let v: String = s
        .chars()
        .filter(|&c| c != '_')
        .collect::<String>()
        .to_lowercase();
    let (neg, body) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v.as_str()),
    };
    let mag = if body == ".inf" {
        f64::INFINITY
    } else if body == ".nan" {
        f64::NAN
    } else if body.contains(':') {
        // Sexagesimal: each part parsed as a float, accumulated in base 60 from the right.
        let mut value = 0.0;
        let mut base = 1.0;
        for part in body.split(':').rev() {
            value += part.parse::<f64>().unwrap_or(0.0) * base;
            base *= 60.0;
        }
        value
    } else {
        body.parse::<f64>().unwrap_or(f64::NAN)
    };
    if neg {
        -mag
    } else {
        mag
    }
}

/// PyYAML's `construct_yaml_int`; `None` when the value does not fit 64 bits.
fn construct_int(s: &str) -> Option<i64> {
    let v: String = s.chars().filter(|&c| c != '_').collect();
    let (neg, body) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v.as_str()),
    };
    let mag: i128 = if body == "0" {
        0
    } else if let Some(d) = body.strip_prefix("0b") {
        i128::from_str_radix(d, 2).ok()?
    } else if let Some(d) = body.strip_prefix("0x") {
        i128::from_str_radix(d, 16).ok()?
    } else if body.contains(':') {
        let mut value: i128 = 0;
        let mut base: i128 = 1;
        for part in body.split(':').rev() {
            value = value.checked_add(part.parse::<i128>().ok()?.checked_mul(base)?)?;
            base = base.checked_mul(60)?;
        }
        value
    } else if let Some(d) = body.strip_prefix('0') {
        i128::from_str_radix(d, 8).ok()?
    } else {
        body.parse::<i128>().ok()?
    };
    i64::try_from(if neg { -mag } else { mag }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let d = load("a: 1\nbb:\n  - x\n").unwrap();
        let Some(Node {
            kind: Kind::Map(m), ..
        }) = d.root
        else {
            panic!()
        };
        assert_eq!(m[0].0.loc, Location { line: 1, column: 1 });
        assert_eq!(m[0].1.loc, Location { line: 1, column: 4 });
        let Kind::Seq(s) = &m[1].1.kind else { panic!() };
        assert_eq!(s[0].loc, Location { line: 3, column: 5 });
    }

    #[test]
    fn duplicates_keep_last_value_first_position() {
        let d = load("a: 1\nb: 2\na: 3\n").unwrap();
        let Some(Node {
            kind: Kind::Map(m), ..
        }) = d.root
        else {
            panic!()
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1.kind, Kind::Int(3));
        assert_eq!(d.duplicates.len(), 1);
    }

    #[test]
    fn second_document_is_an_error() {
        let e = load("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.loc.line, 2);
        assert!(e.message.contains("mergekit-multi"), "{}", e.message);
    }
}

//! Model references: `path[@revision][+lora[@revision]]`, the dict form, and amalgam's
//! `#expert=K` suffix.

/// A path (local directory or Hub id) with an optional revision: mergekit's `ModelPath`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ModelPath {
    /// Local path or Hub id.
    pub path: String,
    /// Branch, tag or commit.
    pub revision: Option<String>,
}

impl std::fmt::Display for ModelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // mergekit prints the revision only when it is non-empty (`if self.revision`).
        match self.revision.as_deref() {
            Some(r) if !r.is_empty() => write!(f, "{}@{}", self.path, r),
            _ => f.write_str(&self.path),
        }
    }
}

impl ModelPath {
    /// Parses `path[@revision]` the way mergekit does: more than one `@` is an error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.split('@');
        let path = parts.next().unwrap_or_default().to_string();
        let revision = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return Err(format!(
                "invalid model path {s:?}: more than one `@` (mergekit: \"Invalid model path - \
                 multiple @: {s}\"); write `path@revision`"
            ));
        }
        Ok(ModelPath { path, revision })
    }
}

/// A model reference (`path[@revision][+lora[@revision]][#expert=K]`, or the dict form).
///
/// Equality compares every field, as mergekit's frozen pydantic models do: the same path with
/// and without a LoRA are two different inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ModelRef {
    /// Local path or Hub id.
    pub path: String,
    /// Branch, tag or commit.
    pub revision: Option<String>,
    /// A LoRA adapter to merge into the model first (`+lora` or `lora:`); amalgam does not
    /// implement this yet (see [`crate::unsupported_features`]).
    pub lora: Option<ModelPath>,
    /// Replaces `architectures` of the model's `config.json` (dict form only); not implemented
    /// yet either.
    pub override_architecture: Option<String>,
    /// amalgam extension: `#expert=K` selects expert `K` of a Mixtral-style MoE checkpoint as a
    /// dense model, so experts can be merged in one pass without extracting them first. mergekit
    /// treats the suffix as part of a Hub id and fails loudly, so such a config is never
    /// silently misread by it.
    pub expert: Option<usize>,
}

impl ModelRef {
    /// A reference to `path` with nothing else.
    pub fn new(path: impl Into<String>) -> Self {
        ModelRef {
            path: path.into(),
            ..ModelRef::default()
        }
    }

    /// Parses the string form `path[@rev][+lora[@rev]][#expert=K]`.
    ///
    /// mergekit splits on `+` first (more than two parts: "Can't parse"), then each part on
    /// `@` (more than one: "Invalid model path - multiple @"). The `#expert=K` suffix is
    /// amalgam's and is taken off the end before that.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (body, expert) = split_expert(s)?;
        let chunks: Vec<&str> = body.split('+').collect();
        let (model, lora) = match chunks.as_slice() {
            [m] => (ModelPath::parse(m)?, None),
            [m, l] => (ModelPath::parse(m)?, Some(ModelPath::parse(l)?)),
            _ => {
                return Err(format!(
                    "cannot parse model reference {s:?}: more than one `+` (mergekit: \"Can't \
                     parse {s}\"); the form is `path[@revision][+lora_path[@revision]]`"
                ))
            }
        };
        if model.path.is_empty() {
            return Err(format!("model reference {s:?} has an empty path"));
        }
        Ok(ModelRef {
            path: model.path,
            revision: model.revision,
            lora,
            override_architecture: None,
            expert,
        })
    }

    /// The model part (path and revision) without LoRA or expert.
    pub fn model_path(&self) -> ModelPath {
        ModelPath {
            path: self.path.clone(),
            revision: self.revision.clone(),
        }
    }
}

/// Takes `#expert=K` off the end of a reference string.
pub(crate) fn split_expert(s: &str) -> Result<(&str, Option<usize>), String> {
    let Some((body, suffix)) = s.split_once('#') else {
        return Ok((s, None));
    };
    let k = suffix
        .strip_prefix("expert=")
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|k| k.parse::<usize>().ok());
    match k {
        Some(k) => Ok((body, Some(k))),
        None => Err(format!(
            "invalid model reference {s:?}: after `#` amalgam accepts only `expert=<index>` \
             (for example `mistral-community/Mixtral-8x22B-v0.1#expert=3`)"
        )),
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.model_path())?;
        if let Some(l) = &self.lora {
            write!(f, "+{l}")?;
        }
        if let Some(k) = self.expert {
            write!(f, "#expert={k}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ModelRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_round_trip() {
        for s in [
            "org/model",
            "org/model@main",
            "org/model+org/lora",
            "org/model@v1+org/lora@v2",
            "./local/path",
            "mistral-community/Mixtral-8x22B-v0.1#expert=3",
            "org/mixtral@abc#expert=0",
        ] {
            assert_eq!(ModelRef::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn parts_are_split_like_mergekit() {
        let m = ModelRef::parse("a@r1+b@r2").unwrap();
        assert_eq!((m.path.as_str(), m.revision.as_deref()), ("a", Some("r1")));
        let l = m.lora.unwrap();
        assert_eq!((l.path.as_str(), l.revision.as_deref()), ("b", Some("r2")));
        let e = ModelRef::parse("org/mixtral@abc#expert=7").unwrap();
        assert_eq!(
            (e.path.as_str(), e.revision.as_deref(), e.expert),
            ("org/mixtral", Some("abc"), Some(7))
        );
        // An empty revision is kept (mergekit's ModelPath has it) but not printed.
        assert_eq!(ModelRef::parse("a@").unwrap().to_string(), "a");
    }

    #[test]
    fn malformed_references_are_refused() {
        assert!(ModelRef::parse("a@b@c").unwrap_err().contains("multiple @"));
        assert!(ModelRef::parse("a+b+c")
            .unwrap_err()
            .contains("Can't parse"));
        for bad in [
            "m#expert=",
            "m#expert=-1",
            "m#expert=x",
            "m#exp=1",
            "m#",
            "m#expert=1#expert=2",
            "",
        ] {
            assert!(ModelRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equality_sees_lora_and_expert() {
        let a = ModelRef::parse("m").unwrap();
        assert_ne!(a, ModelRef::parse("m+l").unwrap());
        assert_ne!(a, ModelRef::parse("m#expert=0").unwrap());
        assert_eq!(a, ModelRef::new("m"));
    }
}

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::MergeMethod;

/// The set of merge methods a run can use, by name.
///
/// A `BTreeMap` so that listings, generated docs and error suggestions come out in the same
/// (sorted) order on every run.
#[derive(Clone, Default)]
pub struct Registry {
    methods: BTreeMap<&'static str, Arc<dyn MergeMethod>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.methods.keys()).finish()
    }
}

impl Registry {
    /// An empty registry, for a binary that wants only its own methods.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every built-in method.
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        for m in crate::builtin::all() {
            r.register(m);
        }
        r
    }

    /// Adds (or replaces) a method under its declared name. Replacing is allowed so that a
    /// third-party crate can substitute its own implementation of a built-in name.
    pub fn register(&mut self, method: Arc<dyn MergeMethod>) {
        self.methods.insert(method.info().name, method);
    }

    /// Looks a method up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn MergeMethod>> {
        self.methods.get(name)
    }

    /// All methods, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn MergeMethod>> {
        self.methods.values()
    }

    /// Every method's schema, sorted by name (what config validation reads).
    pub fn infos(&self) -> Vec<&crate::MethodInfo> {
        self.methods.values().map(|m| m.info()).collect()
    }

    /// All names, sorted (listed, in a stable order, when a config names an unknown method).
    pub fn names(&self) -> Vec<&'static str> {
        self.methods.keys().copied().collect()
    }
}

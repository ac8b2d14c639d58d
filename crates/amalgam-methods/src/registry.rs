use std::collections::BTreeMap;
use std::sync::Arc;

use crate::MergeMethod;

/// The set of merge methods a run can use, by name.
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
    /// An empty registry.
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

    /// Adds (or replaces) a method under its declared name.
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

    /// All names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.methods.keys().copied().collect()
    }
}

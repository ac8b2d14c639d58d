//! The amalgam merge engine (skeleton).

//! No code: this crate only turns features on (see its manifest), so that every entry point of
//! the workspace builds its dependencies with the same features and compiles them once.

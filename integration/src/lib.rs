//! Helpers for the kernel and runtime tests.

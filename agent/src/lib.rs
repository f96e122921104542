//! The Stockade node agent, as a library: one module per stage of an
//! order's path (validate, resolve, enforce, verify, report), with seams at
//! the kernel and the container runtime.

pub mod cgroup;
pub mod uds;

//! The Stockade node agent, as a library: one module per stage of an
//! order's path (validate, resolve, enforce, verify, report), with seams at
//! the kernel and the container runtime.

pub mod access;
pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod contain;
pub mod cri;
pub mod enforce;
pub mod events;
pub mod fault;
pub mod features;
pub mod fuzz;
pub mod health;
pub mod k8s;
pub mod ledger;
pub mod metrics;
pub mod orders;
pub mod server;
pub mod uds;
pub mod validate;

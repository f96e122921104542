//! Helpers for the kernel and runtime tests.
//!
//! The runtime harness: [`Containerd`] starts a private containerd with the
//! CRI plugin and a CNI bridge, [`Pod`] runs pods in it through the CRI,
//! [`PeerNs`] is a network namespace on the same bridge for servers the
//! pods talk to. Everything cleans up on drop.

pub mod containerd;
pub mod foreign;
pub mod image;
pub mod netlab;
pub mod netns;
pub mod sys;

pub use containerd::{preflight, Containerd, Pod, PodSpec};
pub use netns::PeerNs;

//! Stockade's kernel programs and the types they share with user space.
//!
//! The programs are written in C (`src/stockade.bpf.c`, with the shared
//! header `include/stockade.h`) because Rust eBPF needs a nightly toolchain
//! with `rust-src`. `cargo xtask ebpf` builds them with clang into
//! `obj/stockade.bpf.o`, which is committed so that `cargo build` needs no
//! clang; `cargo xtask check-ebpf` fails when the committed object differs
//! from a fresh build.

pub mod abi;

/// The compiled object, aligned as aya's ELF parser requires.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../obj/stockade.bpf.o");

/// The exec guard (`src/guard.bpf.c`), built the same way into
/// `obj/guard.bpf.o`. A separate object, so that the node-wide tracepoint
/// is loaded apart from the per-pod isolation programs.
pub static GUARD_OBJECT: &[u8] = aya::include_bytes_aligned!("../obj/guard.bpf.o");

/// Names of the programs and maps in [`GUARD_OBJECT`].
pub mod guard {
    /// `tracepoint/sched/sched_process_exec`: kills what a contained pod execs.
    pub const EXEC: &str = "stk_guard_exec";
    /// `lsm/bprm_check_security`: only probed (see the agent's features).
    pub const LSM: &str = "stk_guard_lsm";
    /// The contained pods, keyed by pod cgroup id; pinned by name.
    pub const CONTAINED: &str = "stk_contained";
    /// The execs the guard killed; pinned by name.
    pub const EVENTS: &str = "stk_exec_events";
}

/// Names of the programs in [`OBJECT`], one per hook. Every program the
/// agent loads has a name starting with [`PROGRAM_PREFIX`], which is how it
/// recognises its own attachments on a cgroup.
pub mod programs {
    pub const INGRESS: &str = "stk_ingress";
    pub const EGRESS: &str = "stk_egress";
    pub const CONNECT4: &str = "stk_connect4";
    pub const CONNECT6: &str = "stk_connect6";
    pub const SENDMSG4: &str = "stk_sendmsg4";
    pub const SENDMSG6: &str = "stk_sendmsg6";
}

/// Prefix of the name of every program in [`OBJECT`].
pub const PROGRAM_PREFIX: &str = "stk_";

/// Names of the maps in [`OBJECT`]; all are pinned by name.
pub mod maps {
    pub const POLICIES: &str = "stk_policies";
    pub const COUNTERS: &str = "stk_counters";
    pub const NODE_ADDRS: &str = "stk_node_addrs";
    pub const NODE_FLOWS: &str = "stk_node_flows";
    pub const EVENTS: &str = "stk_events";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_holds_every_program_and_map() {
        let parsed = symbol_names(OBJECT);
        for name in [
            programs::INGRESS,
            programs::EGRESS,
            programs::CONNECT4,
            programs::CONNECT6,
            programs::SENDMSG4,
            programs::SENDMSG6,
            maps::POLICIES,
            maps::COUNTERS,
            maps::NODE_ADDRS,
            maps::NODE_FLOWS,
            maps::EVENTS,
        ] {
            assert!(
                parsed.iter().any(|n| n == name),
                "{name} missing from the object"
            );
            assert!(name.len() < 16, "{name} is longer than the kernel keeps");
        }
    }

    #[test]
    fn guard_object_holds_its_programs_and_maps() {
        let parsed = symbol_names(GUARD_OBJECT);
        for name in [guard::EXEC, guard::LSM, guard::CONTAINED, guard::EVENTS] {
            assert!(parsed.iter().any(|n| n == name), "{name} missing");
            assert!(name.len() < 16, "{name} is longer than the kernel keeps");
            assert!(name.starts_with(PROGRAM_PREFIX));
        }
    }

    /// The NUL-separated strings of the object that look like our names.
    fn symbol_names(bytes: &[u8]) -> Vec<String> {
        bytes
            .split(|b| *b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .filter(|s| s.starts_with("stk_"))
            .map(str::to_owned)
            .collect()
    }
}

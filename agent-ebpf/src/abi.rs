//! Rust mirror of `include/stockade.h`.
//!
//! Checked against the header by `header_layout_matches` below, which
//! compiles the header with the host C compiler and compares every size and
//! offset; edit both together.

use aya::Pod;

pub const STK_MAX_ALLOW: usize = 16;
pub const STK_MAX_CGROUP_LEVEL: usize = 16;
pub const STK_MAX_NODE_FLOWS: usize = 8192;
pub const STK_MAX_NODE_ADDRS: usize = 256;
pub const STK_MAX_CONTAINED: usize = 4096;
pub const STK_GUARD_EVENTS_BYTES: usize = 64 * 1024;

pub const STK_PROTO_ANY: u8 = 0;
pub const STK_PROTO_ICMP: u8 = 1;
pub const STK_PROTO_TCP: u8 = 6;
pub const STK_PROTO_UDP: u8 = 17;
pub const STK_PROTO_ICMPV6: u8 = 58;

pub const STK_F_ISOLATED: u32 = 1 << 0;
pub const STK_F_ALLOW_NODE_PROBES: u32 = 1 << 1;

pub const STK_EV_CONNECT_REFUSED: u32 = 1;
pub const STK_EV_SENDMSG_REFUSED: u32 = 2;

/// One allow-list entry; see `struct stk_rule`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StkRule {
    pub addr: [u8; 16],
    pub prefix_len: u8,
    pub proto: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    pub _pad: u16,
}

/// The policy of one isolated pod; see `struct stk_policy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StkPolicy {
    pub flags: u32,
    pub n_rules: u32,
    pub rules: [StkRule; STK_MAX_ALLOW],
}

/// Counters kept for one pod; see `struct stk_counters`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StkCounters {
    pub ingress_dropped: u64,
    pub egress_dropped: u64,
    pub connects_refused: u64,
    pub sends_refused: u64,
}

/// A node-opened TCP session; see `struct stk_flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StkFlowKey {
    pub pod_cgroup_id: u64,
    pub node_addr: [u8; 16],
    pub node_port: u16,
    pub pod_port: u16,
    pub _pad: u32,
}

/// Evidence of a refused attempt; see `struct stk_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StkEvent {
    pub ktime_ns: u64,
    pub pod_cgroup_id: u64,
    pub cgroup_id: u64,
    pub kind: u32,
    pub pid: u32,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub _pad: [u8; 5],
    pub comm: [u8; 16],
}

/// One contained pod; see `struct stk_containment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StkContainment {
    pub since_ns: u64,
    pub execs_killed: u64,
}

/// A program the exec guard killed; see `struct stk_exec_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StkExecEvent {
    pub ktime_ns: u64,
    pub pod_cgroup_id: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// A node address in 16-byte form: key of `stk_node_addrs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StkAddr {
    pub b: [u8; 16],
}

// SAFETY: each type is `repr(C)`, holds only integers and arrays of
// integers, and has explicit padding fields, so every bit pattern is valid
// and there are no uninitialised bytes.
unsafe impl Pod for StkRule {}
// SAFETY: as above.
unsafe impl Pod for StkPolicy {}
// SAFETY: as above.
unsafe impl Pod for StkCounters {}
// SAFETY: as above.
unsafe impl Pod for StkFlowKey {}
// SAFETY: as above.
unsafe impl Pod for StkEvent {}
// SAFETY: as above.
unsafe impl Pod for StkAddr {}
// SAFETY: as above.
unsafe impl Pod for StkContainment {}
// SAFETY: as above.
unsafe impl Pod for StkExecEvent {}

impl StkEvent {
    /// Reads an event from the bytes the ring buffer handed over.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked above, `StkEvent` is Pod (every
        // bit pattern is valid) and `read_unaligned` needs no alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

impl StkExecEvent {
    /// Reads an event from the bytes the guard's ring buffer handed over.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked above, `StkExecEvent` is Pod
        // (every bit pattern is valid) and `read_unaligned` needs no
        // alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

#[cfg(test)]
mod tests {
    use std::{mem::offset_of, path::Path, process::Command};

    use super::*;

    /// Every (C expression, Rust value) pair the header and this file must
    /// agree on.
    fn layout() -> Vec<(&'static str, usize)> {
        macro_rules! field {
            ($c:literal, $t:ty, $f:ident) => {
                (
                    concat!("offsetof(struct ", $c, ", ", stringify!($f), ")"),
                    offset_of!($t, $f),
                )
            };
        }
        vec![
            ("sizeof(struct stk_rule)", size_of::<StkRule>()),
            field!("stk_rule", StkRule, prefix_len),
            field!("stk_rule", StkRule, proto),
            field!("stk_rule", StkRule, port_lo),
            field!("stk_rule", StkRule, port_hi),
            ("sizeof(struct stk_policy)", size_of::<StkPolicy>()),
            field!("stk_policy", StkPolicy, n_rules),
            field!("stk_policy", StkPolicy, rules),
            ("sizeof(struct stk_counters)", size_of::<StkCounters>()),
            field!("stk_counters", StkCounters, egress_dropped),
            field!("stk_counters", StkCounters, connects_refused),
            field!("stk_counters", StkCounters, sends_refused),
            ("sizeof(struct stk_flow_key)", size_of::<StkFlowKey>()),
            field!("stk_flow_key", StkFlowKey, node_addr),
            field!("stk_flow_key", StkFlowKey, node_port),
            field!("stk_flow_key", StkFlowKey, pod_port),
            ("sizeof(struct stk_event)", size_of::<StkEvent>()),
            field!("stk_event", StkEvent, pod_cgroup_id),
            field!("stk_event", StkEvent, cgroup_id),
            field!("stk_event", StkEvent, kind),
            field!("stk_event", StkEvent, pid),
            field!("stk_event", StkEvent, addr),
            field!("stk_event", StkEvent, port),
            field!("stk_event", StkEvent, proto),
            field!("stk_event", StkEvent, comm),
            (
                "sizeof(struct stk_containment)",
                size_of::<StkContainment>(),
            ),
            field!("stk_containment", StkContainment, execs_killed),
            ("sizeof(struct stk_exec_event)", size_of::<StkExecEvent>()),
            field!("stk_exec_event", StkExecEvent, pod_cgroup_id),
            field!("stk_exec_event", StkExecEvent, cgroup_id),
            field!("stk_exec_event", StkExecEvent, pid),
            field!("stk_exec_event", StkExecEvent, comm),
            ("STK_MAX_CONTAINED", STK_MAX_CONTAINED),
            ("STK_GUARD_EVENTS_BYTES", STK_GUARD_EVENTS_BYTES),
            ("STK_MAX_ALLOW", STK_MAX_ALLOW),
            ("STK_MAX_CGROUP_LEVEL", STK_MAX_CGROUP_LEVEL),
            ("STK_MAX_NODE_FLOWS", STK_MAX_NODE_FLOWS),
            ("STK_MAX_NODE_ADDRS", STK_MAX_NODE_ADDRS),
            ("STK_PROTO_ANY", STK_PROTO_ANY.into()),
            ("STK_PROTO_ICMP", STK_PROTO_ICMP.into()),
            ("STK_PROTO_TCP", STK_PROTO_TCP.into()),
            ("STK_PROTO_UDP", STK_PROTO_UDP.into()),
            ("STK_PROTO_ICMPV6", STK_PROTO_ICMPV6.into()),
            ("STK_F_ISOLATED", STK_F_ISOLATED as usize),
            ("STK_F_ALLOW_NODE_PROBES", STK_F_ALLOW_NODE_PROBES as usize),
            ("STK_EV_CONNECT_REFUSED", STK_EV_CONNECT_REFUSED as usize),
            ("STK_EV_SENDMSG_REFUSED", STK_EV_SENDMSG_REFUSED as usize),
        ]
    }

    /// Compiles a C program that prints every expression of `layout()` as
    /// the C compiler sees it, and compares with Rust.
    #[test]
    fn header_layout_matches() {
        let layout = layout();
        let dir = std::env::temp_dir().join(format!("stockade-abi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut src = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include \"stockade.h\"\nint main(void) {\n",
        );
        for (expr, _) in &layout {
            src.push_str(&format!("printf(\"%zu\\n\", (size_t)({expr}));\n"));
        }
        src.push_str("return 0; }\n");
        std::fs::write(dir.join("layout.c"), src).unwrap();

        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = Command::new(&cc)
            .arg("-I")
            .arg(&include)
            .arg(dir.join("layout.c"))
            .arg("-o")
            .arg(dir.join("layout"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
        assert!(built.success(), "the header does not compile");
        let out = Command::new(dir.join("layout")).output().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let c_values: Vec<usize> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(c_values.len(), layout.len());
        for ((expr, rust), c) in layout.iter().zip(c_values) {
            assert_eq!(*rust, c, "{expr}: Rust says {rust}, C says {c}");
        }
    }
}

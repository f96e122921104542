//! Probing the kernel for what the orders need, once at start.
//!
//! What is missing is reported (by `stockade doctor` and the info RPC) with
//! the reason and what to do, and an order that needs it fails with
//! FAILED_PRECONDITION naming it.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
    util::KernelVersion,
};

/// Orders, as named in `needed_by`.
pub const ISOLATE: &str = "isolate";
pub const FREEZE: &str = "freeze";
pub const THAW: &str = "thaw";
pub const KILL: &str = "kill";
pub const TERMINATE: &str = "terminate";
pub const CONTAIN: &str = "contain";
pub const UNCONTAIN: &str = "uncontain";

/// One kernel capability and whether this node has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// Why it is missing and what to do; empty when available.
    pub detail: String,
    pub needed_by: &'static [&'static str],
}

impl Feature {
    fn new(
        name: &'static str,
        needed_by: &'static [&'static str],
        missing: Option<String>,
    ) -> Self {
        Self {
            name,
            available: missing.is_none(),
            detail: missing.unwrap_or_default(),
            needed_by,
        }
    }
}

/// Everything the agent probes. `cgroup2` is the mount found (if any) and
/// `bpffs` the folder that must be on a bpf filesystem.
pub fn probe(cgroup2: Option<&Path>, bpffs: &Path) -> Vec<Feature> {
    vec![
        Feature::new("cgroup2", &[ISOLATE], cgroup2_missing(cgroup2)),
        Feature::new("bpffs", &[ISOLATE], bpffs_missing(bpffs)),
        Feature::new(
            "cgroup_skb",
            &[ISOLATE],
            program_missing(ProgramType::CgroupSkb),
        ),
        Feature::new(
            "cgroup_sock_addr",
            &[ISOLATE],
            program_missing(ProgramType::CgroupSockAddr),
        ),
        Feature::new("bpf_link_cgroup", &[ISOLATE], link_missing()),
        Feature::new("ringbuf", &[], ringbuf_missing()),
        Feature::new("btf", &[], btf_missing()),
    ]
}

/// The features `order` needs that this node lacks, as one sentence.
pub fn missing_for(features: &[Feature], order: &str) -> Option<String> {
    let missing: Vec<String> = features
        .iter()
        .filter(|f| !f.available && f.needed_by.contains(&order))
        .map(|f| format!("{} ({})", f.name, f.detail))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "{order} needs kernel features this node lacks: {}",
        missing.join("; ")
    ))
}

fn cgroup2_missing(mount: Option<&Path>) -> Option<String> {
    match mount {
        Some(_) => None,
        None => Some(
            "no cgroup2 hierarchy is mounted (see /proc/self/mountinfo); \
                      pods cannot be found or isolated"
                .into(),
        ),
    }
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| is_bpf_magic(fs.filesystem_type().0))
}

/// The statfs type field is a C `long`, whose width depends on the target.
#[allow(clippy::unnecessary_cast)]
fn is_bpf_magic(fs_type: libc::c_long) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    fs_type as i64 == BPF_FS_MAGIC
}

fn bpffs_missing(dir: &Path) -> Option<String> {
    let probe = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    match nix::sys::statfs::statfs(probe) {
        Ok(fs) if is_bpf_magic(fs.filesystem_type().0) => None,
        Ok(_) => Some(format!(
            "{} is not on a bpf filesystem: mount -t bpf bpf /sys/fs/bpf \
             (in a pod, mount the host's /sys/fs/bpf)",
            dir.display()
        )),
        Err(e) => Some(format!("cannot stat {}: {e}", probe.display())),
    }
}

fn program_missing(kind: ProgramType) -> Option<String> {
    match is_program_supported(kind) {
        Ok(true) => None,
        Ok(false) => Some(format!("the kernel does not load {kind:?} programs")),
        Err(e) => Some(format!(
            "probing {kind:?} failed: {e} (is CAP_BPF or root granted?)"
        )),
    }
}

fn link_missing() -> Option<String> {
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(5, 7, 0) => None,
        Ok(v) => Some(format!(
            "kernel {v:?} has no BPF links for cgroups (needs 5.7)"
        )),
        Err(e) => Some(format!("cannot read the kernel version: {e}")),
    }
}

fn ringbuf_missing() -> Option<String> {
    match is_map_supported(MapType::RingBuf) {
        Ok(true) => None,
        Ok(false) => {
            Some("no BPF ring buffer (needs 5.8): refused attempts are not recorded".into())
        }
        Err(e) => Some(format!("probing the BPF ring buffer failed: {e}")),
    }
}

fn btf_missing() -> Option<String> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        return None;
    }
    Some("/sys/kernel/btf/vmlinux is absent (CONFIG_DEBUG_INFO_BTF)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(name: &'static str, available: bool, needed_by: &'static [&'static str]) -> Feature {
        Feature {
            name,
            available,
            detail: "why".into(),
            needed_by,
        }
    }

    #[test]
    fn missing_for_names_only_what_the_order_needs() {
        let features = [
            feature("cgroup_skb", false, &[ISOLATE]),
            feature("btf", false, &[]),
            feature("bpffs", true, &[ISOLATE]),
        ];
        let msg = missing_for(&features, ISOLATE).unwrap();
        assert_eq!(
            msg,
            "isolate needs kernel features this node lacks: cgroup_skb (why)"
        );
        assert_eq!(missing_for(&features[1..], ISOLATE), None);
    }

    #[test]
    fn a_missing_cgroup2_mount_is_reported() {
        assert!(cgroup2_missing(None).unwrap().contains("no cgroup2"));
        assert_eq!(cgroup2_missing(Some(Path::new("/sys/fs/cgroup"))), None);
    }
}

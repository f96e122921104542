//! Resolving Kubernetes pods and containers on this node to their cgroup v2
//! directories, from the node's own state: the kubelet cgroup tree and
//! `/proc`.
//!
//! Every layout kubelet and the runtimes produce is understood: the
//! systemd and cgroupfs drivers, every QoS class, kubepods nested below a
//! `--cgroup-root`, and containerd, CRI-O and docker container names. Paths
//! are relative to the cgroup2 mount and start with `/`.
//!
//! The agent must run in the host's cgroup namespace: paths in
//! `/proc/PID/cgroup` are relative to the reader's namespace, and a pod
//! outside it shows up as `/../…`, which is refused
//! ([`CgroupError::OutsideNamespace`]).

mod classify;
mod fs;
mod mount;
mod names;
mod proc;
mod target;
#[cfg(test)]
pub(crate) mod testutil;
mod tree;

use std::{io, path::PathBuf};

pub use classify::{classify, Classified, ContainerRef};
pub(crate) use names::KubepodsLevel;
pub use names::{
    parse_container_dir, parse_pod_dir, CgroupDriver, ContainerId, PodUid, QosClass, Runtime,
};
pub use proc::{parse_proc_cgroup, ProcCgroupLine};
pub use target::check_target;

/// The cgroup2 hierarchy, at its mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2 {
    root: PathBuf,
}

/// A pod's cgroup directory and its containers'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    pub uid: PodUid,
    pub qos: QosClass,
    pub driver: CgroupDriver,
    /// Relative to the mount, starting with `/`.
    pub path: String,
    pub cgroup_id: u64,
    /// Sorted by path; CRI-O's `crio-conmon-…` helper is not a container.
    pub containers: Vec<ContainerCgroup>,
}

/// A container's top cgroup directory; its processes may be in it or in
/// any directory below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    pub id: ContainerId,
    pub runtime: Runtime,
    /// Relative to the mount, starting with `/`.
    pub path: String,
    pub cgroup_id: u64,
}

/// Why a cgroup could not be found, read or acted on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read the mount table")]
    Mountinfo {
        #[source]
        source: procfs::ProcError,
    },

    #[error("no cgroup2 filesystem is mounted")]
    NoCgroup2Mount,

    #[error(
        "the cgroup2 mount at {} shows {root:?}, not the hierarchy's root, so \
         paths from /proc would not match it",
        mount_point.display()
    )]
    MountNotAtRoot { mount_point: PathBuf, root: String },

    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{}: {reason}", path.display())]
    MalformedFile { path: PathBuf, reason: String },

    #[error("line {line} of a /proc/PID/cgroup file: {reason}")]
    MalformedProcCgroup { line: usize, reason: String },

    #[error("{file} has more than one cgroup2 (0::) line")]
    DuplicateUnifiedLine { file: String },

    #[error("{file} has no cgroup2 (0::) line")]
    NoUnifiedLine { file: String },

    #[error("cgroup path {path:?} {reason}")]
    MalformedPath { path: String, reason: &'static str },

    #[error(
        "cgroup path {path:?} lies outside the agent's cgroup namespace; run the \
         agent in the host cgroup namespace"
    )]
    OutsideNamespace { path: String },

    #[error("invalid pod UID {value}: expected a UUID like aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")]
    InvalidUid { value: String },

    #[error("invalid container id {value}: expected 64 lower-case hex digits")]
    InvalidContainerId { value: String },

    #[error("cgroup path {path:?} is not inside a pod's cgroup")]
    NoPod { path: String },

    #[error("pid {pid} is not in a pod: its cgroup2 path is {path:?}")]
    PidNotInPod { pid: u32, path: String },

    #[error("pod {uid} has no cgroup directory on this node")]
    NotFound { uid: PodUid },

    #[error("pod {uid} matches {} cgroup directories: {paths:?}", paths.len())]
    Ambiguous { uid: PodUid, paths: Vec<String> },

    #[error(
        "cgroup driver mismatch: pod {uid} runs in {path:?}, a systemd \
         slice:prefix:id cgroupsPath taken literally by a runtime on the cgroupfs \
         driver, so the pod has no cgroup of its own; configure the runtime with \
         kubelet's cgroup driver (systemd)"
    )]
    DriverMismatch { uid: PodUid, path: String },

    #[error(
        "pod is not in the cgroup2 hierarchy: pid {pid} is in pod cgroup {v1_path:?} \
         on a v1 hierarchy but in {v2_path:?} on cgroup2"
    )]
    NotInCgroup2 {
        pid: u32,
        v1_path: String,
        v2_path: String,
    },

    #[error("refusing cgroup {path:?}: {reason}")]
    Refused { path: String, reason: String },
}

impl CgroupError {
    /// Whether this is a cgroup that vanished while being read, which is
    /// normal for pods and containers that come and go.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Io { source, .. } if fs::gone(source))
    }
}

impl Cgroup2 {
    /// A hierarchy mounted at `root`, trusted as is (tests use a fake tree).
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// The mount point.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The absolute path of cgroup `rel`. No check: the fallible methods
    /// refuse `.` and `..` before touching the filesystem.
    pub fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }
}

/// Untrusted text for an error message: debug-quoted, at most 80 chars.
pub(crate) fn shown(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abs_joins_below_the_mount() {
        let cg = Cgroup2::at(PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            cg.abs("/kubepods/x"),
            PathBuf::from("/sys/fs/cgroup/kubepods/x")
        );
        assert_eq!(cg.abs("/"), PathBuf::from("/sys/fs/cgroup/"));
        assert_eq!(cg.root(), std::path::Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn shown_quotes_and_truncates() {
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        assert_eq!(shown(&"x".repeat(300)), format!("{:?}…", "x".repeat(80)));
    }

    #[test]
    fn error_messages_name_what_failed_and_where() {
        let uid: PodUid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee".parse().unwrap();
        let err = CgroupError::Ambiguous {
            uid,
            paths: vec!["/a".into(), "/b".into()],
        };
        let expected = "pod aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee matches 2 cgroup \
                        directories: [\"/a\", \"/b\"]";
        assert_eq!(err.to_string(), expected);
        let source = io::Error::from(io::ErrorKind::NotFound);
        let err = CgroupError::Io {
            path: "/x/cgroup.events".into(),
            source,
        };
        assert_eq!(err.to_string(), "cannot read /x/cgroup.events");
        assert!(err.is_gone());
    }
}

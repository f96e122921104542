//! Kubernetes identifiers and the cgroup directory names that kubelet and
//! the container runtimes build from them.

use std::{fmt, str::FromStr};

use super::{shown, CgroupError};

/// A pod's `metadata.uid`, held in canonical form: lower-case, dashed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

impl PodUid {
    /// The canonical form, `aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UID as it appears in systemd slice names, with `_` for `-`:
    /// systemd reads a dash in a unit name as a step down the hierarchy.
    pub fn systemd_form(&self) -> String {
        self.0.replace('-', "_")
    }

    /// Parses the exact form kubelet writes with separator `sep`; no case
    /// folding, because kubelet never writes upper case.
    fn parse_exact(text: &str, sep: u8) -> Option<Self> {
        let canonical = uuid_shape(text, sep) && !text.bytes().any(|b| b.is_ascii_uppercase());
        canonical.then(|| Self(text.replace('_', "-")))
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PodUid {
    type Err = CgroupError;

    /// Accepts a dashed UUID in either case and stores it in lower case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if !uuid_shape(text, b'-') {
            return Err(CgroupError::InvalidUid { value: shown(text) });
        }
        Ok(Self(text.to_ascii_lowercase()))
    }
}

/// 8-4-4-4-12 hex digits separated by `sep`.
fn uuid_shape(text: &str, sep: u8) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == sep,
            _ => b.is_ascii_hexdigit(),
        })
}

/// A container id as runtimes write it: 64 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parse_exact(text: &str) -> Option<Self> {
        let ok = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(text.to_owned()))
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ContainerId {
    type Err = CgroupError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse_exact(text)
            .ok_or_else(|| CgroupError::InvalidContainerId { value: shown(text) })
    }
}

/// A pod's Kubernetes quality-of-service class, which decides the level of
/// the cgroup tree its directory sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The Kubernetes spelling: `Guaranteed`, `Burstable`, `BestEffort`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }

    /// The QoS level named by a cgroupfs directory or a slice-name segment.
    fn from_level(level: &str) -> Option<Self> {
        match level {
            "burstable" => Some(Self::Burstable),
            "besteffort" => Some(Self::BestEffort),
            _ => None,
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How kubelet named the pod's cgroup: systemd slices or plain directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

impl CgroupDriver {
    /// `systemd` or `cgroupfs`, as kubelet's `--cgroup-driver` flag says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Cgroupfs => "cgroupfs",
        }
    }
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The container runtime a container cgroup name points to. A bare id
/// (cgroupfs driver with containerd or docker) does not say: `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Unknown,
}

impl Runtime {
    /// `containerd`, `cri-o`, `docker` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Unknown => "unknown",
        }
    }

    /// The runtime of a runc systemd cgroupsPath prefix (`slice:PREFIX:id`).
    fn from_colon_prefix(prefix: &str) -> Self {
        match prefix {
            "cri-containerd" => Self::Containerd,
            "crio" => Self::CriO,
            "docker" => Self::Docker,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses one directory name as a pod's cgroup: a systemd slice
/// (`kubepods-besteffort-pod<UID_>.slice`, also under a prefix such as
/// `kubelet-kubepods-…`) or a cgroupfs `pod<UID>`. A cgroupfs name does
/// not carry the QoS class (its parent does), so that is `None`.
pub fn parse_pod_dir(name: &str) -> Option<(PodUid, Option<QosClass>, CgroupDriver)> {
    if let Some(stem) = name.strip_suffix(".slice") {
        let (uid, qos) = parse_systemd_pod(stem)?;
        return Some((uid, Some(qos), CgroupDriver::Systemd));
    }
    let uid = PodUid::parse_exact(name.strip_prefix("pod")?, b'-')?;
    Some((uid, None, CgroupDriver::Cgroupfs))
}

/// `<kubepods slice stem>-pod<UID_>`, the stem of a pod slice.
fn parse_systemd_pod(stem: &str) -> Option<(PodUid, QosClass)> {
    let (parent, leaf) = stem.rsplit_once('-')?;
    let uid = PodUid::parse_exact(leaf.strip_prefix("pod")?, b'_')?;
    Some((uid, kubepods_slice_qos(parent)?))
}

/// The class of the pods that sit directly in the slice with this stem:
/// `kubepods` holds Guaranteed pods, `kubepods-burstable` Burstable ones.
fn kubepods_slice_qos(stem: &str) -> Option<QosClass> {
    let (rest, qos) = match stem.rsplit_once('-') {
        Some((rest, level)) => match QosClass::from_level(level) {
            Some(qos) => (rest, qos),
            None => (stem, QosClass::Guaranteed),
        },
        None => (stem, QosClass::Guaranteed),
    };
    let kubepods = rest == "kubepods"
        || rest
            .strip_suffix("-kubepods")
            .is_some_and(|prefix| !prefix.is_empty());
    kubepods.then_some(qos)
}

/// The kinds of directory that hold pods rather than being one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KubepodsLevel {
    /// `kubepods`, `kubepods.slice`, `kubelet-kubepods.slice`: every pod.
    Root,
    /// `kubepods/burstable`, `kubepods-besteffort.slice`: one class.
    Qos(QosClass),
}

/// Whether a directory `name` (inside `parent`) is a kubepods or QoS level.
pub(crate) fn kubepods_level(name: &str, parent: Option<&str>) -> Option<KubepodsLevel> {
    let level = |qos| match qos {
        QosClass::Guaranteed => KubepodsLevel::Root,
        other => KubepodsLevel::Qos(other),
    };
    if let Some(stem) = name.strip_suffix(".slice") {
        return kubepods_slice_qos(stem).map(level);
    }
    if name == "kubepods" {
        return Some(KubepodsLevel::Root);
    }
    let qos = QosClass::from_level(name)?;
    (parent == Some("kubepods")).then_some(KubepodsLevel::Qos(qos))
}

/// Parses one directory name as a container's cgroup.
///
/// `crio-conmon-<CID>.scope` holds CRI-O's monitor, not the container, and
/// is not one.
pub fn parse_container_dir(name: &str) -> Option<(Runtime, ContainerId)> {
    const SCOPES: [(&str, Runtime); 3] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
    ];
    if let Some(stem) = name.strip_suffix(".scope") {
        let (id, runtime) = SCOPES
            .iter()
            .find_map(|(prefix, runtime)| Some((stem.strip_prefix(prefix)?, *runtime)))?;
        return Some((runtime, ContainerId::parse_exact(id)?));
    }
    if let Some(id) = name.strip_prefix("crio-") {
        return Some((Runtime::CriO, ContainerId::parse_exact(id)?));
    }
    Some((Runtime::Unknown, ContainerId::parse_exact(name)?))
}

/// A runc systemd cgroupsPath `<pod slice>:<prefix>:<CID>` that a runtime
/// on the cgroupfs driver took literally as one directory name.
pub(crate) struct ColonForm {
    pub uid: PodUid,
    pub qos: QosClass,
    pub runtime: Runtime,
    pub id: ContainerId,
}

pub(crate) fn parse_colon_form(name: &str) -> Option<ColonForm> {
    let mut fields = name.splitn(3, ':');
    let (slice, prefix, id) = (fields.next()?, fields.next()?, fields.next()?);
    let (uid, qos) = parse_systemd_pod(slice.strip_suffix(".slice")?)?;
    let id = ContainerId::parse_exact(id)?;
    let runtime = Runtime::from_colon_prefix(prefix);
    Some(ColonForm {
        uid,
        qos,
        runtime,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    const UID_: &str = "aaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn uid() -> PodUid {
        PodUid(UID.to_owned())
    }

    #[test]
    fn pod_uid_from_str_normalizes_case() {
        let parsed: PodUid = "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE".parse().unwrap();
        assert_eq!(parsed.as_str(), UID);
        assert_eq!(parsed.to_string(), UID);
        assert_eq!(parsed.systemd_form(), UID_);
    }

    #[test]
    fn pod_uid_from_str_refuses_malformed_input() {
        let bad = [
            "",
            "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeee",
            "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeeee",
            "aaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee",
            "aaaaaaaabbbb-4ccc-8ddd-eeeeeeeeeeee-",
            "gaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
            " aaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
            "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeee\n",
            "../../../../etc/passwd/../../../../",
            "{aaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeee}",
        ];
        for text in bad {
            let err = text.parse::<PodUid>().unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidUid { .. }),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn container_id_needs_64_lower_case_hex_digits() {
        assert_eq!(CID.parse::<ContainerId>().unwrap().as_str(), CID);
        for bad in [
            &CID[1..],
            &CID.to_uppercase(),
            &format!("{CID}0"),
            &CID.replace('0', "g"),
        ] {
            assert!(bad.parse::<ContainerId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn systemd_pod_slices_carry_their_class() {
        let cases = [
            (format!("kubepods-pod{UID_}.slice"), QosClass::Guaranteed),
            (
                format!("kubepods-burstable-pod{UID_}.slice"),
                QosClass::Burstable,
            ),
            (
                format!("kubepods-besteffort-pod{UID_}.slice"),
                QosClass::BestEffort,
            ),
            (
                format!("kubelet-kubepods-besteffort-pod{UID_}.slice"),
                QosClass::BestEffort,
            ),
            (
                format!("kubelet-kubepods-pod{UID_}.slice"),
                QosClass::Guaranteed,
            ),
        ];
        for (name, qos) in cases {
            let expected = (uid(), Some(qos), CgroupDriver::Systemd);
            assert_eq!(parse_pod_dir(&name), Some(expected), "{name}");
        }
    }

    #[test]
    fn cgroupfs_pod_dirs_have_dashes_and_no_class() {
        let expected = (uid(), None, CgroupDriver::Cgroupfs);
        assert_eq!(parse_pod_dir(&format!("pod{UID}")), Some(expected));
    }

    #[test]
    fn underscores_become_dashes_only_in_systemd_names() {
        let refused = [
            format!("pod{UID_}"),
            format!("kubepods-pod{UID}.slice"),
            format!("kubepods-besteffort-pod{UID}.slice"),
            format!("pod{}", UID.to_uppercase()),
            format!("kubepods-pod{}.slice", UID_.to_uppercase()),
            format!("-kubepods-pod{UID_}.slice"),
            format!("notkubepods-pod{UID_}.slice"),
            format!("kubepods-guaranteed-pod{UID_}.slice"),
            format!("kubepods-pod{UID_}.scope"),
            format!("pod{UID}.slice"),
            "kubepods.slice".to_owned(),
            "kubepods-burstable.slice".to_owned(),
            "pod".to_owned(),
        ];
        for name in refused {
            assert_eq!(parse_pod_dir(&name), None, "{name}");
        }
    }

    #[test]
    fn container_dirs_of_every_runtime() {
        let id = || CID.parse::<ContainerId>().unwrap();
        let cases = [
            (format!("cri-containerd-{CID}.scope"), Runtime::Containerd),
            (format!("crio-{CID}.scope"), Runtime::CriO),
            (format!("crio-{CID}"), Runtime::CriO),
            (format!("docker-{CID}.scope"), Runtime::Docker),
            (CID.to_owned(), Runtime::Unknown),
        ];
        for (name, runtime) in cases {
            assert_eq!(parse_container_dir(&name), Some((runtime, id())), "{name}");
        }
    }

    #[test]
    fn helper_and_malformed_dirs_are_not_containers() {
        let refused = [
            format!("crio-conmon-{CID}.scope"),
            format!("crio-conmon-{CID}"),
            format!("cri-containerd-{CID}"),
            format!("podman-{CID}.scope"),
            format!("docker-{}.scope", &CID[1..]),
            format!("{CID}.scope"),
            "container".to_owned(),
        ];
        for name in refused {
            assert_eq!(parse_container_dir(&name), None, "{name}");
        }
    }

    #[test]
    fn kubepods_levels_in_both_drivers() {
        use KubepodsLevel::*;
        let cases = [
            ("kubepods", None, Some(Root)),
            ("kubepods.slice", None, Some(Root)),
            ("kubelet-kubepods.slice", None, Some(Root)),
            (
                "kubepods-burstable.slice",
                None,
                Some(Qos(QosClass::Burstable)),
            ),
            (
                "kubepods-besteffort.slice",
                None,
                Some(Qos(QosClass::BestEffort)),
            ),
            (
                "burstable",
                Some("kubepods"),
                Some(Qos(QosClass::Burstable)),
            ),
            (
                "besteffort",
                Some("kubepods"),
                Some(Qos(QosClass::BestEffort)),
            ),
            ("besteffort", Some("other"), None),
            ("system.slice", None, None),
        ];
        for (name, parent, expected) in cases {
            assert_eq!(kubepods_level(name, parent), expected, "{name}");
        }
    }
}

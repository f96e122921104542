//! What a whole cgroup path says about the pod and container it lies in.

use super::{
    names::{kubepods_level, parse_colon_form, parse_container_dir, parse_pod_dir},
    CgroupDriver, CgroupError, ContainerId, KubepodsLevel, PodUid, QosClass, Runtime,
};

/// The pod (and container) a cgroup path lies in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub uid: PodUid,
    pub qos: QosClass,
    pub driver: CgroupDriver,
    /// The pod's own directory. `None` for a runc `slice:prefix:id` path
    /// taken literally: then the pod has no directory, only its container
    /// has one (see [`CgroupError::DriverMismatch`]).
    pub pod_path: Option<String>,
    pub container: Option<ContainerRef>,
}

/// A container named by a path; `path` is its top directory, whatever
/// depth below it the classified path went to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: ContainerId,
    pub runtime: Runtime,
    pub path: String,
}

/// Classifies a cgroup path relative to the cgroup2 mount (or a v1 path
/// from `/proc/PID/cgroup`). The outermost pod directory on the path wins.
pub fn classify(path: &str) -> Result<Classified, CgroupError> {
    let parts = components(path)?;
    (0..parts.len())
        .find_map(|i| pod_at(&parts, i))
        .ok_or_else(|| CgroupError::NoPod {
            path: path.to_owned(),
        })
}

/// The pod whose directory is `parts[i]`, if it is one.
fn pod_at(parts: &[&str], i: usize) -> Option<Classified> {
    if let Some(colon) = parse_colon_form(parts[i]) {
        let container = ContainerRef {
            id: colon.id,
            runtime: colon.runtime,
            path: join(&parts[..=i]),
        };
        let (uid, qos, driver) = (colon.uid, colon.qos, CgroupDriver::Systemd);
        return Some(Classified {
            uid,
            qos,
            driver,
            pod_path: None,
            container: Some(container),
        });
    }

    let (uid, qos, driver) = parse_pod_dir(parts[i])?;
    let qos = match qos {
        Some(qos) => qos,
        None => cgroupfs_qos(&parts[..i])?,
    };

    let container = parts.get(i + 1).and_then(|name| {
        let (runtime, id) = parse_container_dir(name)?;
        Some(ContainerRef {
            id,
            runtime,
            path: join(&parts[..=i + 1]),
        })
    });
    Some(Classified {
        uid,
        qos,
        driver,
        pod_path: Some(join(&parts[..=i])),
        container,
    })
}

/// The class of a cgroupfs `pod<UID>` from its ancestors, or `None` when
/// they are not kubelet's (`…/kubepods[/burstable|/besteffort]`).
fn cgroupfs_qos(ancestors: &[&str]) -> Option<QosClass> {
    match ancestors {
        [.., "kubepods"] => Some(QosClass::Guaranteed),
        [.., grandparent, parent] => match kubepods_level(parent, Some(grandparent)) {
            Some(KubepodsLevel::Qos(qos)) => Some(qos),
            _ => None,
        },
        _ => None,
    }
}

/// Splits an absolute cgroup path into its names, refusing `.` and `..`:
/// a path from `/proc` never has them unless it lies outside the reader's
/// cgroup namespace, and nothing else may use them to climb out.
pub(crate) fn components(path: &str) -> Result<Vec<&str>, CgroupError> {
    let malformed = |reason| CgroupError::MalformedPath {
        path: path.to_owned(),
        reason,
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| malformed("not absolute"))?;
    let parts: Vec<&str> = rest.split('/').filter(|part| !part.is_empty()).collect();
    if parts.first() == Some(&"..") {
        return Err(CgroupError::OutsideNamespace {
            path: path.to_owned(),
        });
    }
    if parts.iter().any(|part| matches!(*part, "." | "..")) {
        return Err(malformed("has a . or .. component"));
    }
    Ok(parts)
}

pub(crate) fn join(parts: &[&str]) -> String {
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    const UID_: &str = "aaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// CASES.md C01 rows 1-5: (path, pod directory, class, driver, runtime).
    #[rustfmt::skip]
    fn c01_rows() -> Vec<(String, String, QosClass, CgroupDriver, Runtime)> {
        use {CgroupDriver::*, QosClass::*, Runtime::*};
        let be = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        let g = format!("/kubepods.slice/kubepods-pod{UID_}.slice");
        let bu = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        );
        let fs_g = format!("/kubepods/pod{UID}");
        let fs_bu = format!("/kubepods/burstable/pod{UID}");
        vec![
            (format!("{be}/cri-containerd-{CID}.scope"), be, BestEffort, Systemd, Containerd),
            (format!("{g}/crio-{CID}.scope"), g, Guaranteed, Systemd, CriO),
            (format!("{fs_g}/{CID}"), fs_g, Guaranteed, Cgroupfs, Unknown),
            (format!("{fs_bu}/crio-{CID}"), fs_bu, Burstable, Cgroupfs, CriO),
            (format!("{bu}/docker-{CID}.scope"), bu, Burstable, Systemd, Docker),
        ]
    }

    #[test]
    fn c01_every_kubelet_layout_resolves_to_the_pod_and_container() {
        for (path, pod_path, qos, driver, runtime) in c01_rows() {
            let expected = Classified {
                uid: UID.parse().unwrap(),
                qos,
                driver,
                pod_path: Some(pod_path),
                container: Some(ContainerRef {
                    id: CID.parse().unwrap(),
                    runtime,
                    path: path.clone(),
                }),
            };
            assert_eq!(classify(&path).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn c02_colon_paths_keep_their_colons_and_name_the_container() {
        let v2 = format!("/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}");
        let v1 = format!(
            "/system.slice/containerd.service/\
             kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"
        );
        for (path, qos) in [(v2, QosClass::BestEffort), (v1, QosClass::Burstable)] {
            let got = classify(&path).unwrap();
            assert_eq!(got.uid.as_str(), UID);
            assert_eq!(got.qos, qos);
            assert_eq!(got.driver, CgroupDriver::Systemd);
            assert_eq!(got.pod_path, None, "no pod directory exists in this layout");
            let container = got.container.unwrap();
            assert_eq!(container.id.as_str(), CID);
            assert_eq!(container.runtime, Runtime::Containerd);
            assert_eq!(container.path, path);
        }
    }

    #[test]
    fn c04_anything_below_a_container_belongs_to_it() {
        let pod = format!("/kubepods.slice/kubepods-pod{UID_}.slice");
        let top = format!("{pod}/crio-{CID}.scope");
        for path in [
            format!("{top}/container"),
            format!("{top}/inner/a"),
            format!("{top}/a/b/c"),
        ] {
            let container = classify(&path).unwrap().container.unwrap();
            assert_eq!(container.path, top, "{path}");
            assert_eq!(container.id.as_str(), CID);
        }
    }

    #[test]
    fn pod_paths_without_a_container() {
        let pod = format!("/kubepods/besteffort/pod{UID}");
        for path in [
            pod.clone(),
            format!("{pod}/crio-conmon-{CID}.scope"),
            format!("{pod}/x"),
        ] {
            let got = classify(&path).unwrap();
            assert_eq!(got.pod_path.as_deref(), Some(pod.as_str()), "{path}");
            assert_eq!(got.qos, QosClass::BestEffort);
            assert_eq!(got.container, None, "{path}");
        }
    }

    #[test]
    fn nested_kubepods_are_found() {
        let path = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/\
             kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
        );
        let got = classify(&path).unwrap();
        assert_eq!((got.uid.as_str(), got.qos), (UID, QosClass::Burstable));
        let got = classify(&format!("/kubelet/kubepods/besteffort/pod{UID}/{CID}")).unwrap();
        assert_eq!((got.uid.as_str(), got.qos), (UID, QosClass::BestEffort));
    }

    #[test]
    fn cgroupfs_pods_outside_kubepods_are_not_pods() {
        for path in [
            format!("/pod{UID}/{CID}"),
            format!("/other/pod{UID}"),
            format!("/other/burstable/pod{UID}"),
            format!("/kubepods/guaranteed/pod{UID}"),
            format!("/kubepods/pod{UID_}/{CID}"),
            "/".to_owned(),
            "/system.slice/containerd.service".to_owned(),
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
        ] {
            let err = classify(&path).unwrap_err();
            assert!(matches!(err, CgroupError::NoPod { .. }), "{path}: {err}");
        }
    }

    #[test]
    fn dot_dot_paths_are_refused() {
        let err = classify(&format!("/../../kubepods/pod{UID}")).unwrap_err();
        assert!(matches!(err, CgroupError::OutsideNamespace { .. }), "{err}");
        let err = classify(&format!("/kubepods/pod{UID}/../..")).unwrap_err();
        assert!(matches!(err, CgroupError::MalformedPath { .. }), "{err}");
        let err = classify(&format!("kubepods/pod{UID}")).unwrap_err();
        assert!(matches!(err, CgroupError::MalformedPath { .. }), "{err}");
    }
}

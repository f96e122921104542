//! Walking the live cgroup tree for kubelet's pod directories.

use super::{
    classify::join,
    names::{kubepods_level, parse_colon_form, parse_container_dir, parse_pod_dir},
    Cgroup2, CgroupError, ContainerCgroup, KubepodsLevel, PodCgroup, PodUid, QosClass,
};

/// How many levels below the mount a kubepods directory may sit: kubelet
/// with `--cgroup-root` puts it at `/kubelet.slice/kubelet-kubepods.slice`,
/// and a node inside a container (kind) adds a level or two above that.
const SEARCH_DEPTH: usize = 4;

/// What the search for kubepods directories found.
#[derive(Default)]
struct Found {
    /// `kubepods`, `kubepods.slice` and the like, wherever they are.
    roots: Vec<String>,
    /// runc `slice:prefix:id` directories (see `CgroupError::DriverMismatch`).
    colon_dirs: Vec<String>,
}

impl Cgroup2 {
    /// Every pod directory under every kubepods directory of the tree, with
    /// the containers directly inside each, sorted by path. Directories
    /// removed during the walk are left out.
    pub fn scan_pods(&self) -> Result<Vec<PodCgroup>, CgroupError> {
        let mut pods = Vec::new();
        for root in self.search()?.roots {
            self.scan_kubepods(&root, &mut pods)?;
        }
        pods.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(pods)
    }

    /// The one pod directory of `uid`. More than one is
    /// [`CgroupError::Ambiguous`]: acting on either could miss the pod.
    pub fn find_pod(&self, uid: &PodUid) -> Result<PodCgroup, CgroupError> {
        let mut found: Vec<PodCgroup> = self
            .scan_pods()?
            .into_iter()
            .filter(|pod| &pod.uid == uid)
            .collect();
        if found.len() > 1 {
            let paths = found.into_iter().map(|pod| pod.path).collect();
            return Err(CgroupError::Ambiguous {
                uid: uid.clone(),
                paths,
            });
        }
        match found.pop() {
            Some(pod) => Ok(pod),
            None => Err(self.missing_pod(uid)?),
        }
    }

    /// Why `uid` has no pod directory: a runc colon directory of the pod is
    /// a driver mismatch; otherwise the pod is not on this node.
    fn missing_pod(&self, uid: &PodUid) -> Result<CgroupError, CgroupError> {
        let colon = self.search()?.colon_dirs.into_iter().find(|path| {
            let name = path.rsplit('/').next().unwrap_or_default();
            parse_colon_form(name).is_some_and(|form| &form.uid == uid)
        });
        Ok(match colon {
            Some(path) => CgroupError::DriverMismatch {
                uid: uid.clone(),
                path,
            },
            None => CgroupError::NotFound { uid: uid.clone() },
        })
    }

    /// Breadth-first search down to [`SEARCH_DEPTH`], not entering what it
    /// finds.
    fn search(&self) -> Result<Found, CgroupError> {
        let mut found = Found::default();
        let mut level = vec![Vec::<String>::new()];

        for _ in 0..SEARCH_DEPTH {
            let mut next = Vec::new();
            for parent in level {
                for name in self.child_dirs(&join_owned(&parent))? {
                    let mut path = parent.clone();
                    path.push(name);
                    match classify_dir(&path) {
                        Some(Kind::Kubepods) => found.roots.push(join_owned(&path)),
                        Some(Kind::Colon) => found.colon_dirs.push(join_owned(&path)),
                        None => next.push(path),
                    }
                }
            }
            level = next;
        }
        Ok(found)
    }

    /// Collects the pods directly in kubepods directory `root` and in its
    /// QoS levels.
    fn scan_kubepods(&self, root: &str, pods: &mut Vec<PodCgroup>) -> Result<(), CgroupError> {
        let root_name = root.rsplit('/').next();
        for name in self.child_dirs(root)? {
            let path = format!("{root}/{name}");
            match kubepods_level(&name, root_name) {
                Some(KubepodsLevel::Qos(qos)) => {
                    for pod in self.child_dirs(&path)? {
                        pods.extend(self.pod(&format!("{path}/{pod}"), &pod, qos)?);
                    }
                }
                Some(KubepodsLevel::Root) => {}
                None => pods.extend(self.pod(&path, &name, QosClass::Guaranteed)?),
            }
        }
        Ok(())
    }

    /// The pod at `path` if `name` is a pod directory; a cgroupfs name
    /// takes the class of the level it sits in, `level_qos`.
    fn pod(
        &self,
        path: &str,
        name: &str,
        level_qos: QosClass,
    ) -> Result<Option<PodCgroup>, CgroupError> {
        let Some((uid, qos, driver)) = parse_pod_dir(name) else {
            return Ok(None);
        };
        let cgroup_id = match self.cgroup_id(path) {
            Err(err) if err.is_gone() => return Ok(None),
            other => other?,
        };
        let containers = self.containers(path)?;
        let (path, qos) = (path.to_owned(), qos.unwrap_or(level_qos));
        Ok(Some(PodCgroup {
            uid,
            qos,
            driver,
            path,
            cgroup_id,
            containers,
        }))
    }

    /// The container directories directly inside pod directory `pod`;
    /// whatever is below one of them belongs to it.
    fn containers(&self, pod: &str) -> Result<Vec<ContainerCgroup>, CgroupError> {
        let mut containers = Vec::new();
        for name in self.child_dirs(pod)? {
            let Some((runtime, id)) = parse_container_dir(&name) else {
                continue;
            };
            let path = format!("{pod}/{name}");
            match self.cgroup_id(&path) {
                Ok(cgroup_id) => containers.push(ContainerCgroup {
                    id,
                    runtime,
                    path,
                    cgroup_id,
                }),
                Err(err) if err.is_gone() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(containers)
    }
}

enum Kind {
    Kubepods,
    Colon,
}

/// Whether the directory at `path` (its names from the mount down) is
/// where the search stops.
fn classify_dir(path: &[String]) -> Option<Kind> {
    let (name, ancestors) = path.split_last()?;
    let parent = ancestors.last().map(String::as_str);
    if kubepods_level(name, parent) == Some(KubepodsLevel::Root) {
        return Some(Kind::Kubepods);
    }
    parse_colon_form(name).map(|_| Kind::Colon)
}

fn join_owned(parts: &[String]) -> String {
    join(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{testutil::FakeTree, CgroupDriver, ContainerId, Runtime};

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    const UID_: &str = "aaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const CID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    /// A UID whose first group is `n` repeated, e.g. `11111111-bbbb-…`.
    fn uid(n: char) -> String {
        format!("{}{}", n.to_string().repeat(8), &UID[8..])
    }

    fn summary(pods: &[PodCgroup]) -> Vec<(String, QosClass, CgroupDriver, String)> {
        pods.iter()
            .map(|p| (p.uid.to_string(), p.qos, p.driver, p.path.clone()))
            .collect()
    }

    #[test]
    fn scans_both_drivers_and_every_class() {
        let tree = FakeTree::new();
        let s = |u: &str| u.replace('-', "_");
        let paths = [
            format!("/kubepods.slice/kubepods-pod{}.slice", s(&uid('1'))),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                s(&uid('2'))
            ),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                s(&uid('3'))
            ),
            format!("/kubepods/pod{}", uid('4')),
            format!("/kubepods/burstable/pod{}", uid('5')),
            format!("/kubepods/besteffort/pod{}", uid('6')),
        ];
        for path in &paths {
            tree.mkdir(path);
        }
        tree.mkdir("/kubepods/besteffort/not-a-pod");
        tree.mkdir("/kubepods.slice/kubepods-burstable.slice/other.slice");
        tree.mkdir("/system.slice/containerd.service");

        use {CgroupDriver::*, QosClass::*};
        let classes = [
            (Guaranteed, Systemd),
            (Burstable, Systemd),
            (BestEffort, Systemd),
            (Guaranteed, Cgroupfs),
            (Burstable, Cgroupfs),
            (BestEffort, Cgroupfs),
        ];
        let mut expected: Vec<_> = paths
            .iter()
            .zip(classes)
            .zip("123456".chars())
            .map(|((path, (qos, driver)), n)| (uid(n), qos, driver, path.clone()))
            .collect();
        expected.sort_by(|a, b| a.3.cmp(&b.3));

        let pods = tree.cgroup2().scan_pods().unwrap();
        assert_eq!(summary(&pods), expected);
        for pod in &pods {
            assert_eq!(pod.cgroup_id, tree.ino(&pod.path));
        }
    }

    #[test]
    fn finds_nested_kubepods() {
        let tree = FakeTree::new();
        let systemd = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod{}.slice",
            uid('1').replace('-', "_")
        );
        let cgroupfs = format!("/docker/abc/kubelet/kubepods/burstable/pod{}", uid('2'));
        tree.mkdir(&systemd);
        tree.mkdir(&cgroupfs);
        tree.mkdir(&format!("/a/b/c/d/kubepods/pod{}", uid('3')));

        use {CgroupDriver::*, QosClass::*};
        let expected = vec![
            (uid('2'), Burstable, Cgroupfs, cgroupfs),
            (uid('1'), BestEffort, Systemd, systemd),
        ];
        assert_eq!(summary(&tree.cgroup2().scan_pods().unwrap()), expected);
    }

    #[test]
    fn find_pod_returns_the_one_match_with_its_containers() {
        let tree = FakeTree::new();
        let pod =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        tree.mkdir(&format!("{pod}/cri-containerd-{CID}.scope"));
        tree.mkdir(&format!("{pod}/docker-{CID2}.scope"));
        tree.mkdir(&format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            uid('1').replace('-', "_")
        ));

        let found = tree.cgroup2().find_pod(&UID.parse().unwrap()).unwrap();
        assert_eq!(
            (found.uid.as_str(), found.qos, found.path.as_str()),
            (UID, QosClass::Burstable, pod.as_str())
        );
        let expected = vec![
            container(
                CID,
                Runtime::Containerd,
                format!("{pod}/cri-containerd-{CID}.scope"),
                &tree,
            ),
            container(
                CID2,
                Runtime::Docker,
                format!("{pod}/docker-{CID2}.scope"),
                &tree,
            ),
        ];
        assert_eq!(found.containers, expected);
    }

    fn container(id: &str, runtime: Runtime, path: String, tree: &FakeTree) -> ContainerCgroup {
        let cgroup_id = tree.ino(&path);
        ContainerCgroup {
            id: id.parse::<ContainerId>().unwrap(),
            runtime,
            path,
            cgroup_id,
        }
    }

    #[test]
    fn two_directories_of_one_uid_are_ambiguous() {
        let tree = FakeTree::new();
        let a = format!("/kubepods/besteffort/pod{UID}");
        let b =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        tree.mkdir(&a);
        tree.mkdir(&b);
        match tree.cgroup2().find_pod(&UID.parse().unwrap()) {
            Err(CgroupError::Ambiguous { uid, paths }) => {
                assert_eq!(uid.as_str(), UID);
                assert_eq!(paths, vec![b, a], "sorted by path");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_pod_is_not_found() {
        let tree = FakeTree::new();
        tree.mkdir(&format!("/kubepods/pod{}", uid('1')));
        let err = tree.cgroup2().find_pod(&UID.parse().unwrap()).unwrap_err();
        assert!(
            matches!(&err, CgroupError::NotFound { uid } if uid.as_str() == UID),
            "{err}"
        );
    }

    #[test]
    fn c02_a_pod_only_in_colon_directories_is_a_driver_mismatch() {
        let tree = FakeTree::new();
        let colon = format!(
            "/system.slice/containerd.service/\
             kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}"
        );
        tree.mkdir(&colon);
        tree.mkdir("/kubepods.slice/kubepods-besteffort.slice");
        let err = tree.cgroup2().find_pod(&UID.parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("cgroup driver mismatch"), "{err}");
        assert!(matches!(err, CgroupError::DriverMismatch { path, .. } if path == colon));
    }

    #[test]
    fn c04_containers_are_their_top_directories() {
        let tree = FakeTree::new();
        let pod = format!("/kubepods.slice/kubepods-pod{UID_}.slice");
        tree.write(&format!("{pod}/crio-{CID}.scope/cgroup.procs"), "");
        tree.write(
            &format!("{pod}/crio-{CID}.scope/container/cgroup.procs"),
            "42\n",
        );
        tree.write(
            &format!("{pod}/crio-{CID2}.scope/inner/a/cgroup.procs"),
            "7\n",
        );
        tree.write(
            &format!("{pod}/crio-{CID2}.scope/inner/b/cgroup.procs"),
            "8\n",
        );
        tree.mkdir(&format!("{pod}/crio-conmon-{CID}.scope"));

        let cg = tree.cgroup2();
        let found = cg.find_pod(&UID.parse().unwrap()).unwrap();
        let paths: Vec<_> = found.containers.iter().map(|c| c.path.clone()).collect();
        assert_eq!(
            paths,
            vec![
                format!("{pod}/crio-{CID}.scope"),
                format!("{pod}/crio-{CID2}.scope")
            ]
        );
        assert_eq!(cg.pids_recursive(&paths[0]).unwrap(), vec![42]);
        assert_eq!(cg.pids_recursive(&paths[1]).unwrap(), vec![7, 8]);
    }

    #[test]
    fn the_real_tree_scans_and_agrees_with_classify() {
        let cg = Cgroup2::discover().unwrap();
        for pod in cg.scan_pods().unwrap() {
            let found = crate::cgroup::classify(&pod.path).unwrap();
            assert_eq!(
                (found.uid, found.qos, found.driver),
                (pod.uid, pod.qos, pod.driver)
            );
        }
        let uid = "00000000-0000-4000-8000-000000000000".parse().unwrap();
        let err = cg.find_pod(&uid).unwrap_err();
        assert!(matches!(err, CgroupError::NotFound { .. }), "{err}");
    }
}

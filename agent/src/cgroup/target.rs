//! The last check before acting on a cgroup: never more than one pod.

use super::{classify::components, names::kubepods_level, CgroupError};

/// Refuses a target cgroup that holds more than a pod, or the agent: the
/// root, a kubepods or QoS level (either driver), and the agent's own
/// cgroup or any of its ancestors. Paths are compared name by name, so
/// `/a/pod1` is not an ancestor of `/a/pod10`.
///
/// This is a list of refusals, not proof that `pod_path` is a pod; use
/// [`super::classify`] for that.
pub fn check_target(pod_path: &str, agent_path: &str) -> Result<(), CgroupError> {
    let refuse = |reason: String| CgroupError::Refused {
        path: pod_path.to_owned(),
        reason,
    };
    let target = components(pod_path).map_err(|err| refuse(err.to_string()))?;
    let agent = components(agent_path)
        .map_err(|err| refuse(format!("the agent's own cgroup is unusable: {err}")))?;

    let Some((name, ancestors)) = target.split_last() else {
        return Err(refuse(
            "the cgroup2 root holds every process of the node".to_owned(),
        ));
    };
    if kubepods_level(name, ancestors.last().copied()).is_some() {
        return Err(refuse(format!(
            "{name:?} is a kubepods or QoS level holding many pods"
        )));
    }
    if agent.starts_with(&target) {
        return Err(refuse(format!(
            "it contains the agent itself ({agent_path:?})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str =
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podagent.slice";
    const UID_: &str = "aaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee";

    fn refused(path: &str, agent: &str) -> String {
        match check_target(path, agent) {
            Err(CgroupError::Refused { path: got, reason }) => {
                assert_eq!(got, path);
                reason
            }
            other => panic!("{path}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_root_is_refused() {
        for root in ["/", "//", "/./"] {
            refused(root, AGENT);
        }
        assert!(refused("/", AGENT).contains("root"));
    }

    #[test]
    fn every_kubepods_and_qos_level_is_refused() {
        let levels = [
            "/kubepods",
            "/kubepods/",
            "/kubepods/burstable",
            "/kubepods/besteffort",
            "/kubelet/kubepods/besteffort",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubelet.slice/kubelet-kubepods.slice",
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice",
        ];
        for level in levels {
            assert!(
                refused(level, "/system.slice/stockade.service").contains("QoS"),
                "{level}"
            );
        }
    }

    #[test]
    fn the_agent_and_its_ancestors_are_refused() {
        let agent = format!("{AGENT}/cri-containerd-x.scope");
        for path in [
            agent.as_str(),
            AGENT,
            "/kubepods.slice/kubepods-burstable.slice/",
        ] {
            let reason = refused(path, &agent);
            assert!(
                reason.contains("agent") || reason.contains("QoS"),
                "{path}: {reason}"
            );
        }
        assert!(refused(AGENT, &agent).contains("contains the agent"));
        assert!(refused("/a", "/a/b/c").contains("contains the agent"));
        assert!(refused("/a/b/c", "/a//b/c/").contains("contains the agent"));
    }

    #[test]
    fn a_sibling_sharing_a_name_prefix_is_allowed() {
        assert_eq!(check_target("/a/pod10", "/a/pod1").ok(), Some(()));
        assert_eq!(check_target("/a/pod1", "/a/pod10").ok(), Some(()));
        assert_eq!(check_target("/a/pod1", "/a/pod10/c").ok(), Some(()));
        let pod = format!("/kubepods.slice/kubepods-pod{UID_}.slice");
        assert_eq!(check_target(&pod, AGENT).ok(), Some(()));
        assert_eq!(check_target(&pod, "/").ok(), Some(()));
    }

    #[test]
    fn qos_names_outside_kubepods_are_not_levels() {
        assert_eq!(check_target("/other/burstable", AGENT).ok(), Some(()));
    }

    #[test]
    fn climbing_paths_are_refused() {
        for path in [
            "/kubepods/pod1/..",
            "/kubepods/pod1/../..",
            "/../x",
            "kubepods/pod1",
            "",
        ] {
            refused(path, AGENT);
        }
        refused("/kubepods.slice/kubepods-podx.slice", "relative/agent");
    }
}

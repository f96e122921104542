//! Probing, once at start, the cgroup files and API access that the
//! containment orders use.

use std::path::{Path, PathBuf};

use super::kill::KillMethod;
use crate::{
    cgroup::Cgroup2,
    features::{Feature, FREEZE, KILL, TERMINATE, THAW},
};

/// Why `cgroup.kill` is unusable here, or `None`.
pub fn cgroup_kill_missing(cgroups: Option<&Cgroup2>, own: &str) -> Option<String> {
    file_missing(cgroups, own, super::kill::KILL_FILE, "5.14")
}

/// Why `cgroup.freeze` is unusable here, or `None`.
pub fn cgroup_freeze_missing(cgroups: Option<&Cgroup2>, own: &str) -> Option<String> {
    file_missing(cgroups, own, super::freeze::FREEZE_FILE, "5.2")
}

/// The two cgroup features. The kill needs the freezer only when it uses
/// the fallback; `cgroup.kill` itself is needed by no order, since the
/// fallback replaces it.
pub fn cgroup_features(cgroups: Option<&Cgroup2>, own: &str, method: KillMethod) -> Vec<Feature> {
    let freeze_needed_by: &'static [&'static str] = match method {
        KillMethod::CgroupKill => &[FREEZE, THAW],
        KillMethod::FreezeSignal => &[FREEZE, THAW, KILL, TERMINATE],
    };
    let kill_missing = cgroup_kill_missing(cgroups, own)
        .map(|why| format!("{why}; kills use the fallback: freeze, SIGKILL each process, thaw"));
    vec![
        feature(
            "cgroup.freeze",
            freeze_needed_by,
            cgroup_freeze_missing(cgroups, own),
        ),
        feature("cgroup.kill", &[], kill_missing),
    ]
}

/// The API server that terminate deletes pods through.
pub fn kube_feature(problem: &str) -> Feature {
    let missing = (!problem.is_empty())
        .then(|| format!("{problem}; terminate still kills, but cannot delete the pod"));
    feature("kube_api", &[], missing)
}

pub(crate) fn feature(
    name: &'static str,
    needed_by: &'static [&'static str],
    missing: Option<String>,
) -> Feature {
    Feature {
        name,
        available: missing.is_none(),
        detail: missing.unwrap_or_default(),
        needed_by,
    }
}

/// Control files exist only in non-root cgroups, so the probe looks in the
/// agent's own cgroup, or else in any child of the root.
fn file_missing(cgroups: Option<&Cgroup2>, own: &str, file: &str, linux: &str) -> Option<String> {
    let Some(cgroups) = cgroups else {
        return Some("no cgroup2 hierarchy is mounted".into());
    };
    let found = match probe_dir(cgroups.root(), own) {
        Some(dir) => Ok(dir.join(file).exists()),
        None => in_scratch_cgroup(cgroups.root(), file),
    };
    match found {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "cgroups here have no {file} (Linux {linux} adds it)"
        )),
        Err(e) => Some(format!(
            "no cgroup below the root to look for {file} in, and none could be made: {e}"
        )),
    }
}

/// An agent alone in the root of a fresh hierarchy has no child cgroup to
/// look in: make a scratch one, look, and remove it.
fn in_scratch_cgroup(root: &Path, file: &str) -> std::io::Result<bool> {
    let scratch = root.join(format!("stockade-probe-{}", std::process::id()));
    std::fs::create_dir(&scratch)?;
    let found = scratch.join(file).exists();
    std::fs::remove_dir(&scratch)?;
    Ok(found)
}

fn probe_dir(root: &Path, own: &str) -> Option<PathBuf> {
    let own = own.trim_matches('/');
    if !own.is_empty() && !own.split('/').any(|c| c == "..") {
        return Some(root.join(own));
    }
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::testutil::FakeTree;

    #[test]
    fn the_probe_looks_in_the_agents_own_cgroup() {
        let tree = FakeTree::new();
        tree.write("/agent/cgroup.freeze", "0\n");
        let cg = tree.cgroup2();

        assert_eq!(cgroup_freeze_missing(Some(&cg), "/agent"), None);
        let why = cgroup_kill_missing(Some(&cg), "/agent").unwrap();
        assert!(why.contains("cgroup.kill") && why.contains("5.14"), "{why}");
    }

    #[test]
    fn an_agent_in_the_root_cgroup_probes_a_child() {
        let tree = FakeTree::new();
        tree.write("/some.slice/cgroup.kill", "");
        assert_eq!(cgroup_kill_missing(Some(&tree.cgroup2()), "/"), None);
    }

    #[test]
    fn an_agent_alone_in_the_root_probes_a_scratch_cgroup_and_removes_it() {
        let tree = FakeTree::new();
        let cg = tree.cgroup2();

        // A plain folder gets no control files, unlike a real cgroup.
        let why = cgroup_kill_missing(Some(&cg), "/").unwrap();

        assert!(why.contains("no cgroup.kill"), "{why}");
        let left = std::fs::read_dir(cg.root()).unwrap().count();
        assert_eq!(left, 0, "the scratch cgroup was not removed");
    }

    #[test]
    fn the_fallback_makes_the_freezer_needed_by_kill() {
        let tree = FakeTree::new();
        tree.mkdir("/agent");
        let cg = tree.cgroup2();

        let features = cgroup_features(Some(&cg), "/agent", KillMethod::FreezeSignal);

        let freeze = &features[0];
        assert!(!freeze.available && freeze.needed_by.contains(&KILL));
        let kill = &features[1];
        assert!(kill.needed_by.is_empty());
        assert!(kill.detail.contains("fallback"), "{}", kill.detail);
    }

    #[test]
    fn a_missing_api_server_says_what_terminate_still_does() {
        assert!(kube_feature("").available);
        let f = kube_feature("no API server");
        assert!(
            !f.available && f.detail.contains("still kills"),
            "{}",
            f.detail
        );
    }
}

//! `/proc/PID/cgroup`: which cgroups a process is in, and so which pod.

use std::path::Path;

use super::{classify, fs::read_text, Cgroup2, CgroupError, ContainerId, PodUid};

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcCgroupLine {
    pub hierarchy_id: u32,
    /// Empty for cgroup2; `name=systemd` and the like stay as written.
    pub controllers: Vec<String>,
    /// Relative to the hierarchy's root, colons and all.
    pub path: String,
}

impl ProcCgroupLine {
    /// Whether this is the cgroup2 line, `0::PATH`.
    pub fn is_unified(&self) -> bool {
        self.hierarchy_id == 0 && self.controllers.is_empty()
    }
}

/// Parses `/proc/PID/cgroup`. Each line is split into at most three
/// fields, because a path may hold colons (a runc systemd cgroupsPath
/// taken literally, `…slice:cri-containerd:<CID>`).
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroupLine>, CgroupError> {
    let mut lines = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
    {
        lines.push(
            parse_line(line).map_err(|reason| CgroupError::MalformedProcCgroup {
                line: index + 1,
                reason,
            })?,
        );
    }
    Ok(lines)
}

fn parse_line(line: &str) -> Result<ProcCgroupLine, String> {
    let mut fields = line.splitn(3, ':');
    let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!(
            "{} has fewer than three fields",
            super::shown(line)
        ));
    };

    let digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    let hierarchy_id = id.parse().ok().filter(|_| digits);
    let hierarchy_id =
        hierarchy_id.ok_or_else(|| format!("bad hierarchy id {}", super::shown(id)))?;
    if !path.starts_with('/') {
        return Err(format!("path {} is not absolute", super::shown(path)));
    }

    let controllers = controllers
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    Ok(ProcCgroupLine {
        hierarchy_id,
        controllers: controllers.collect(),
        path: path.to_owned(),
    })
}

/// The cgroup2 path of a parsed file; `file` names it in the error.
fn unified_path<'a>(lines: &'a [ProcCgroupLine], file: &str) -> Result<&'a str, CgroupError> {
    let mut unified = lines.iter().filter(|line| line.is_unified());
    match (unified.next(), unified.next()) {
        (Some(line), None) => Ok(&line.path),
        (None, _) => Err(CgroupError::NoUnifiedLine {
            file: file.to_owned(),
        }),
        (Some(_), Some(_)) => Err(CgroupError::DuplicateUnifiedLine {
            file: file.to_owned(),
        }),
    }
}

impl Cgroup2 {
    /// The agent's own cgroup2 path, from `/proc/self/cgroup`.
    pub fn own_cgroup(&self) -> Result<String, CgroupError> {
        let file = "/proc/self/cgroup";
        let lines = parse_proc_cgroup(&read_text(Path::new(file))?)?;
        unified_path(&lines, file).map(str::to_owned)
    }

    /// The pod, container and pod cgroup directory of process `pid`, from
    /// `/proc/PID/cgroup`. See [`Self::resolve_proc_cgroup`].
    pub fn resolve_pid(
        &self,
        pid: u32,
    ) -> Result<(PodUid, Option<ContainerId>, String), CgroupError> {
        let file = format!("/proc/{pid}/cgroup");
        let text = read_text(Path::new(&file))?;
        self.resolve_proc_cgroup(pid, &text)
    }

    /// Resolves the text of `/proc/PID/cgroup`. Only the cgroup2 line
    /// counts; the answer's directory is the pod's and exists under the
    /// mount. Refused: a pod seen only on v1 hierarchies
    /// ([`CgroupError::NotInCgroup2`]) and a runc colon path
    /// ([`CgroupError::DriverMismatch`]). Never a parent instead.
    pub fn resolve_proc_cgroup(
        &self,
        pid: u32,
        text: &str,
    ) -> Result<(PodUid, Option<ContainerId>, String), CgroupError> {
        let lines = parse_proc_cgroup(text)?;
        let unified = match unified_path(&lines, &format!("/proc/{pid}/cgroup")) {
            Ok(path) => path,
            Err(CgroupError::NoUnifiedLine { file }) => {
                return Err(not_in_pod(pid, None, &lines, file))
            }
            Err(err) => return Err(err),
        };

        let found = match classify(unified) {
            Ok(found) => found,
            Err(CgroupError::NoPod { .. }) => {
                return Err(not_in_pod(pid, Some(unified), &lines, String::new()));
            }
            Err(err) => return Err(err),
        };

        let container = found.container.map(|c| (c.id, c.path));
        let Some(pod_path) = found.pod_path else {
            let path = container.map(|(_, path)| path).unwrap_or_default();
            return Err(CgroupError::DriverMismatch {
                uid: found.uid,
                path,
            });
        };
        self.cgroup_id(&pod_path)?;
        Ok((found.uid, container.map(|(id, _)| id), pod_path))
    }
}

/// The error for a process whose cgroup2 path (if any; `file` names the
/// file without one) is in no pod: a pod on a v1 line means the node's
/// runtime keeps the pod out of cgroup2.
fn not_in_pod(
    pid: u32,
    unified: Option<&str>,
    lines: &[ProcCgroupLine],
    file: String,
) -> CgroupError {
    let v1_pod = lines
        .iter()
        .filter(|line| !line.is_unified())
        .find(|line| classify(&line.path).is_ok());
    match (v1_pod, unified) {
        (Some(line), _) => CgroupError::NotInCgroup2 {
            pid,
            v1_path: line.path.clone(),
            v2_path: unified.unwrap_or("(none)").to_owned(),
        },
        (None, Some(path)) => CgroupError::PidNotInPod {
            pid,
            path: path.to_owned(),
        },
        (None, None) => CgroupError::NoUnifiedLine { file },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::testutil::FakeTree;

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    const UID_: &str = "aaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn line(id: u32, controllers: &[&str], path: &str) -> ProcCgroupLine {
        let controllers = controllers.iter().map(|c| c.to_string()).collect();
        ProcCgroupLine {
            hierarchy_id: id,
            controllers,
            path: path.to_owned(),
        }
    }

    #[test]
    fn parses_a_hybrid_host() {
        let text = "9:name=systemd:/\n4:memory,memsw:/a/b\n1:cpu:/\n0::/\n";
        let expected = vec![
            line(9, &["name=systemd"], "/"),
            line(4, &["memory", "memsw"], "/a/b"),
            line(1, &["cpu"], "/"),
            line(0, &[], "/"),
        ];
        assert_eq!(parse_proc_cgroup(text).unwrap(), expected);
        assert!(expected[3].is_unified() && !expected[0].is_unified());
    }

    #[test]
    fn c02_paths_keep_their_colons() {
        let v2 = format!("/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}");
        let v1 = format!(
            "/system.slice/containerd.service/\
             kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"
        );
        let text = format!("0::{v2}\n4:memory:{v1}");
        let expected = vec![line(0, &[], &v2), line(4, &["memory"], &v1)];
        assert_eq!(parse_proc_cgroup(&text).unwrap(), expected);
    }

    #[test]
    fn edge_cases_of_the_format() {
        assert_eq!(parse_proc_cgroup("").unwrap(), vec![]);
        assert_eq!(
            parse_proc_cgroup("\n\n0::/a b\n").unwrap(),
            vec![line(0, &[], "/a b")]
        );
        assert_eq!(
            parse_proc_cgroup("0::/a:b:c").unwrap(),
            vec![line(0, &[], "/a:b:c")]
        );
        assert_eq!(
            parse_proc_cgroup("3:,cpu,:/").unwrap(),
            vec![line(3, &["cpu"], "/")]
        );
        let bad = [
            "0:/",
            "x::/",
            "-1::/",
            "+1::/",
            "::/",
            "0::",
            "0::relative",
            "99999999999::/",
        ];
        for text in bad {
            let err = parse_proc_cgroup(&format!("0::/\n{text}\n")).unwrap_err();
            assert!(
                matches!(err, CgroupError::MalformedProcCgroup { line: 2, .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn resolves_a_process_in_a_container() {
        let tree = FakeTree::new();
        let pod = format!("/kubepods/besteffort/pod{UID}");
        tree.mkdir(&format!("{pod}/{CID}"));
        let text = format!("1:cpu:/\n0::{pod}/{CID}\n");
        let (uid, cid, dir) = tree.cgroup2().resolve_proc_cgroup(7, &text).unwrap();
        assert_eq!((uid.as_str(), cid.unwrap().as_str(), dir), (UID, CID, pod));
    }

    #[test]
    fn c02_a_colon_path_is_a_driver_mismatch_not_its_parent() {
        let tree = FakeTree::new();
        tree.mkdir("/kubepods.slice");
        let v2 = format!("/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}");
        let err = tree
            .cgroup2()
            .resolve_proc_cgroup(7, &format!("0::{v2}\n"))
            .unwrap_err();
        assert!(err.to_string().contains("cgroup driver mismatch"), "{err}");
        match err {
            CgroupError::DriverMismatch { uid, path } => {
                assert_eq!((uid.as_str(), path), (UID, v2))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn c03_a_pod_only_on_v1_is_not_in_cgroup2() {
        let tree = FakeTree::new();
        tree.mkdir("/system.slice/containerd.service");
        let v1 = format!(
            "/system.slice/containerd.service/\
             kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"
        );
        let v1_cgroupfs = format!("/kubepods/burstable/pod{UID}/{CID}");
        for v1 in [v1, v1_cgroupfs] {
            let text = format!("4:memory:{v1}\n1:cpu:/\n0::/system.slice/containerd.service\n");
            let err = tree.cgroup2().resolve_proc_cgroup(7, &text).unwrap_err();
            assert!(
                err.to_string()
                    .contains("pod is not in the cgroup2 hierarchy"),
                "{err}"
            );
            assert!(
                matches!(err, CgroupError::NotInCgroup2 { pid: 7, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn c03_a_v1_only_host_is_not_in_cgroup2() {
        let text = format!("4:memory:/kubepods/pod{UID}/{CID}\n");
        let err = FakeTree::new()
            .cgroup2()
            .resolve_proc_cgroup(7, &text)
            .unwrap_err();
        assert!(matches!(err, CgroupError::NotInCgroup2 { .. }), "{err}");
    }

    #[test]
    fn a_process_outside_any_pod_is_refused() {
        let text = "4:memory:/system.slice\n0::/system.slice/sshd.service\n";
        let err = FakeTree::new()
            .cgroup2()
            .resolve_proc_cgroup(7, text)
            .unwrap_err();
        assert!(
            matches!(err, CgroupError::PidNotInPod { pid: 7, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_pod_path_missing_from_the_mount_is_an_io_error() {
        let text = format!("0::/kubepods/pod{UID}/{CID}\n");
        let err = FakeTree::new()
            .cgroup2()
            .resolve_proc_cgroup(7, &text)
            .unwrap_err();
        assert!(matches!(err, CgroupError::Io { .. }), "{err}");
    }

    #[test]
    fn two_cgroup2_lines_are_malformed() {
        let err = FakeTree::new()
            .cgroup2()
            .resolve_proc_cgroup(7, "0::/a\n0::/b\n")
            .unwrap_err();
        assert!(
            matches!(err, CgroupError::DuplicateUnifiedLine { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_a_cgroup2_line_or_v1_pod_says_so() {
        let err = FakeTree::new()
            .cgroup2()
            .resolve_proc_cgroup(
                7,
                "4:memory:/a
",
            )
            .unwrap_err();
        assert!(matches!(err, CgroupError::NoUnifiedLine { .. }), "{err}");
    }

    #[test]
    fn own_cgroup_reads_this_process() {
        let own = FakeTree::new().cgroup2().own_cgroup().unwrap();
        assert!(own.starts_with('/'), "{own}");
    }

    #[test]
    fn resolve_pid_reads_proc() {
        let tree = FakeTree::new();
        let pid = std::process::id();
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let from_text = tree
            .cgroup2()
            .resolve_proc_cgroup(pid, &text)
            .map_err(|e| e.to_string());
        let from_proc = tree.cgroup2().resolve_pid(pid).map_err(|e| e.to_string());
        assert_eq!(from_proc, from_text);
        let err = tree.cgroup2().resolve_pid(u32::MAX).unwrap_err();
        assert!(matches!(err, CgroupError::Io { .. }), "{err}");
    }
}

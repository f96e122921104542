//! Enforcement in the kernel: loading the isolation programs once, attaching
//! them to a pod's cgroup with pinned links, and reading back what the
//! kernel holds.
//!
//! Pin layout (under the configured folder, `/sys/fs/bpf/stockade` by
//! default), versioned so that a newer agent can adopt what an older one
//! left:
//!
//! ```text
//! v1/maps/<map name>               every map, pinned by name
//! v1/cgroups/<cgroup id>/<hook>    one link per hook of an isolated pod
//! ```
//!
//! The pins are what keeps enforcement alive when the agent exits; the
//! `stk_policies` entry keyed by the pod's cgroup id is what the programs
//! enforce.

mod query;

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
    },
    Ebpf, EbpfLoader,
};
use stockade_ebpf::{
    abi::{StkAddr, StkCounters, StkPolicy},
    maps, programs, OBJECT, PROGRAM_PREFIX,
};

pub use query::{attached_programs, program_name};

/// Version of the pin layout below the configured folder.
pub const PIN_LAYOUT: &str = "v1";

/// `BPF_NOEXIST`: create a map entry only if it does not exist.
const BPF_NOEXIST: u64 = 1;

/// `enum bpf_attach_type` values of the hooks we use.
mod attach_type {
    pub const INGRESS: u32 = 0;
    pub const EGRESS: u32 = 1;
    pub const CONNECT4: u32 = 10;
    pub const CONNECT6: u32 = 11;
    pub const SENDMSG4: u32 = 14;
    pub const SENDMSG6: u32 = 15;
}

/// One place in the kernel where an isolation program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// The section name, as people know the hook.
    pub name: &'static str,
    /// The program attached there.
    pub program: &'static str,
    /// File name of the link's pin.
    pub pin: &'static str,
    /// `enum bpf_attach_type`.
    pub attach_type: u32,
}

/// Every hook an isolation attaches to, in attach order: the
/// connection-level hooks first, so that new attempts fail with EPERM
/// before packets start being dropped.
pub const HOOKS: [Hook; 6] = [
    Hook {
        name: "cgroup/connect4",
        program: programs::CONNECT4,
        pin: "connect4",
        attach_type: attach_type::CONNECT4,
    },
    Hook {
        name: "cgroup/connect6",
        program: programs::CONNECT6,
        pin: "connect6",
        attach_type: attach_type::CONNECT6,
    },
    Hook {
        name: "cgroup/sendmsg4",
        program: programs::SENDMSG4,
        pin: "sendmsg4",
        attach_type: attach_type::SENDMSG4,
    },
    Hook {
        name: "cgroup/sendmsg6",
        program: programs::SENDMSG6,
        pin: "sendmsg6",
        attach_type: attach_type::SENDMSG6,
    },
    Hook {
        name: "cgroup_skb/egress",
        program: programs::EGRESS,
        pin: "egress",
        attach_type: attach_type::EGRESS,
    },
    Hook {
        name: "cgroup_skb/ingress",
        program: programs::INGRESS,
        pin: "ingress",
        attach_type: attach_type::INGRESS,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("cannot prepare the pin folder {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused to load the isolation programs")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the kernel refused to load program {program}")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("program {program} is missing from the embedded object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the embedded object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot open cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused to attach {hook} to {path}")]
    Attach {
        hook: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the {hook} attachment is not a BPF link (kernel older than 5.7?)")]
    NotFdLink {
        hook: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("cannot pin the {hook} link at {pin}")]
    Pin {
        hook: &'static str,
        pin: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot remove the pinned link {pin}")]
    Unpin {
        pin: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot query the programs attached to {path} at {hook}")]
    Query {
        hook: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = EnforceError> = std::result::Result<T, E>;

/// A link the agent holds on a pod's cgroup, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub hook: &'static str,
    pub program_id: u32,
    pub pin: PathBuf,
}

/// What one hook of a cgroup holds, split into our programs and others'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookState {
    pub ours: Vec<u32>,
    pub foreign: Vec<u32>,
}

/// The loaded isolation programs and their pinned maps.
pub struct Enforcer {
    ebpf: Ebpf,
    dir: PathBuf,
}

impl Enforcer {
    /// Loads every program into the kernel, pinning the maps under
    /// `<pin_root>/v1/maps` (or reusing the maps already pinned there, so
    /// that programs left attached by an earlier agent share them).
    pub fn load(pin_root: &Path) -> Result<Self> {
        let dir = pin_root.join(PIN_LAYOUT);
        let map_dir = dir.join("maps");
        fs::create_dir_all(&map_dir).map_err(|source| EnforceError::PinDir {
            path: map_dir.clone(),
            source,
        })?;
        fs::create_dir_all(dir.join("cgroups")).map_err(|source| EnforceError::PinDir {
            path: dir.clone(),
            source,
        })?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&map_dir)
            .load(OBJECT)
            .map_err(|e| EnforceError::Load {
                source: Box::new(e),
            })?;

        for hook in HOOKS {
            load_program(&mut ebpf, hook.program)?;
        }
        Ok(Self { ebpf, dir })
    }

    /// The versioned pin folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the set of addresses that count as the node's own.
    pub fn set_node_addrs(&mut self, addrs: &[IpAddr]) -> Result<()> {
        let mut map = self.map::<StkAddr, u8>(maps::NODE_ADDRS)?;
        let old: Vec<StkAddr> = map.keys().filter_map(|k| k.ok()).collect();
        let wanted: Vec<StkAddr> = addrs.iter().map(|a| StkAddr { b: addr16(*a) }).collect();
        for key in old.iter().filter(|k| !wanted.contains(k)) {
            map.remove(key)
                .map_err(map_err(maps::NODE_ADDRS, "remove"))?;
        }
        for key in &wanted {
            map.insert(key, 1, 0)
                .map_err(map_err(maps::NODE_ADDRS, "insert"))?;
        }
        Ok(())
    }

    /// Isolates the cgroup at `path` (whose id is `id`) with `policy`.
    ///
    /// The policy goes into the kernel first, then every hook is attached
    /// and pinned; hooks already pinned for this cgroup are kept, so the
    /// call is safe to repeat. On failure, what this call attached is
    /// removed again and a policy it created is deleted.
    pub fn isolate(&mut self, path: &Path, id: u64, policy: &StkPolicy) -> Result<Vec<Attached>> {
        let cgroup = open_cgroup(path)?;
        let had_policy = self.policy(id)?.is_some();
        self.write_policy(id, policy)?;

        let mut made = Vec::new();
        for hook in HOOKS {
            match self.attach_pinned(&cgroup, path, id, hook) {
                Ok(Some(pin)) => {
                    made.push(pin);
                    crate::fault::numbered("isolate:after_attach", made.len());
                }
                Ok(None) => {}
                Err(err) => {
                    self.undo(&made, id, had_policy);
                    return Err(err);
                }
            }
        }
        self.attachments(path, id)
    }

    /// Removes exactly our links from the cgroup with `id` and deletes its
    /// policy. `path` may be gone already (the pod was deleted).
    pub fn release(&mut self, id: u64) -> Result<()> {
        let folder = self.cgroup_dir(id);
        for hook in HOOKS {
            unpin(&folder.join(hook.pin))?;
        }
        if let Err(source) = fs::remove_dir(&folder) {
            if source.kind() != io::ErrorKind::NotFound {
                return Err(EnforceError::Unpin {
                    pin: folder,
                    source: Box::new(source),
                });
            }
        }
        self.delete_policy(id)
    }

    /// Our pinned links on the cgroup, checked against what the kernel
    /// says is attached: a pin whose program is not attached is left out.
    pub fn attachments(&self, path: &Path, id: u64) -> Result<Vec<Attached>> {
        let state = inspect(path)?;
        let mut out = Vec::new();
        for hook in HOOKS {
            let pin = self.cgroup_dir(id).join(hook.pin);
            let Ok(link) = PinnedLink::from_pin(&pin) else {
                continue;
            };
            let Ok(info) = FdLink::from(link).info() else {
                continue;
            };
            let attached = state
                .get(hook.name)
                .is_some_and(|s| s.ours.contains(&info.program_id()));
            if attached {
                out.push(Attached {
                    hook: hook.name,
                    program_id: info.program_id(),
                    pin,
                });
            }
        }
        Ok(out)
    }

    /// The policy in force for cgroup `id`, if any.
    pub fn policy(&self, id: u64) -> Result<Option<StkPolicy>> {
        let map = self.map_ref::<u64, StkPolicy>(maps::POLICIES)?;
        match map.get(&id, 0) {
            Ok(p) => Ok(Some(p)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::POLICIES, "lookup")(e)),
        }
    }

    /// What the programs counted for cgroup `id`.
    pub fn counters(&self, id: u64) -> Result<StkCounters> {
        let map = self.map_ref::<u64, StkCounters>(maps::COUNTERS)?;
        match map.get(&id, 0) {
            Ok(c) => Ok(c),
            Err(aya::maps::MapError::KeyNotFound) => Ok(StkCounters::default()),
            Err(e) => Err(map_err(maps::COUNTERS, "lookup")(e)),
        }
    }

    /// Cgroup ids that have a pin folder, whatever the state of their links.
    pub fn pinned_cgroups(&self) -> Result<Vec<u64>> {
        let folder = self.dir.join("cgroups");
        let entries = fs::read_dir(&folder).map_err(|source| EnforceError::PinDir {
            path: folder.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect())
    }

    /// Cgroup ids that have a policy in the kernel.
    pub fn policy_cgroups(&self) -> Result<Vec<u64>> {
        let map = self.map_ref::<u64, StkPolicy>(maps::POLICIES)?;
        Ok(map.keys().filter_map(|k| k.ok()).collect())
    }

    /// Takes the ring buffer of refused attempts, for the event reader.
    pub fn take_events(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(EnforceError::MissingMap { map: maps::EVENTS })?;
        aya::maps::RingBuf::try_from(map).map_err(map_err(maps::EVENTS, "open"))
    }

    fn cgroup_dir(&self, id: u64) -> PathBuf {
        self.dir.join("cgroups").join(id.to_string())
    }

    /// Attaches `hook` unless a pin for it exists already; returns the new pin.
    fn attach_pinned(
        &mut self,
        cgroup: &File,
        path: &Path,
        id: u64,
        hook: Hook,
    ) -> Result<Option<PathBuf>> {
        let pin = self.cgroup_dir(id).join(hook.pin);
        if PinnedLink::from_pin(&pin).is_ok() {
            return Ok(None);
        }
        let folder = self.cgroup_dir(id);
        fs::create_dir_all(&folder).map_err(|source| EnforceError::PinDir {
            path: folder,
            source,
        })?;

        let link = self.attach(cgroup, path, hook)?;
        link.pin(&pin).map_err(|e| EnforceError::Pin {
            hook: hook.name,
            pin: pin.clone(),
            source: Box::new(e),
        })?;
        Ok(Some(pin))
    }

    fn attach(&mut self, cgroup: &File, path: &Path, hook: Hook) -> Result<FdLink> {
        let attach_err = |e| EnforceError::Attach {
            hook: hook.name,
            path: path.to_owned(),
            source: Box::new(e),
        };
        let prog = self
            .ebpf
            .program_mut(hook.program)
            .ok_or(EnforceError::MissingProgram {
                program: hook.program,
            })?;
        // Single: with a link the kernel still lets other tools' programs
        // run beside ours (see KERNEL-NOTES.md on AllowMultiple).
        let mode = CgroupAttachMode::Single;
        let link: FdLink = if let Ok(p) = <&mut CgroupSkb>::try_from(&mut *prog) {
            let kind = if hook.attach_type == attach_type::INGRESS {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            let link_id = p.attach(cgroup, kind, mode).map_err(attach_err)?;
            let link = p.take_link(link_id).map_err(attach_err)?;
            FdLink::try_from(link).map_err(|source| EnforceError::NotFdLink {
                hook: hook.name,
                source,
            })?
        } else {
            let p = <&mut CgroupSockAddr>::try_from(prog).map_err(attach_err)?;
            let link_id = p.attach(cgroup, mode).map_err(attach_err)?;
            let link = p.take_link(link_id).map_err(attach_err)?;
            FdLink::try_from(link).map_err(|source| EnforceError::NotFdLink {
                hook: hook.name,
                source,
            })?
        };
        Ok(link)
    }

    /// Best-effort rollback of a failed isolate.
    fn undo(&mut self, made: &[PathBuf], id: u64, had_policy: bool) {
        for pin in made {
            if let Err(err) = unpin(pin) {
                tracing::warn!(pin = %pin.display(), error = %err, "rollback could not remove a link");
            }
        }
        let _ = fs::remove_dir(self.cgroup_dir(id));
        if !had_policy {
            if let Err(err) = self.delete_policy(id) {
                tracing::warn!(cgroup.id = id, error = %err, "rollback could not delete the policy");
            }
        }
    }

    fn write_policy(&mut self, id: u64, policy: &StkPolicy) -> Result<()> {
        let mut counters = self.map::<u64, StkCounters>(maps::COUNTERS)?;
        // BPF_NOEXIST keeps the counts of an isolation being re-applied.
        let _ = counters.insert(id, StkCounters::default(), BPF_NOEXIST);
        let mut policies = self.map::<u64, StkPolicy>(maps::POLICIES)?;
        policies
            .insert(id, *policy, 0)
            .map_err(map_err(maps::POLICIES, "insert"))
    }

    fn delete_policy(&mut self, id: u64) -> Result<()> {
        let mut policies = self.map::<u64, StkPolicy>(maps::POLICIES)?;
        let removed = policies.remove(&id);
        ignore_missing(removed).map_err(map_err(maps::POLICIES, "remove"))?;
        let mut counters = self.map::<u64, StkCounters>(maps::COUNTERS)?;
        let removed = counters.remove(&id);
        ignore_missing(removed).map_err(map_err(maps::COUNTERS, "remove"))
    }

    fn map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(EnforceError::MissingMap { map: name })?;
        BpfHashMap::try_from(map).map_err(map_err(name, "open"))
    }

    fn map_ref<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<BpfHashMap<&MapData, K, V>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(EnforceError::MissingMap { map: name })?;
        BpfHashMap::try_from(map).map_err(map_err(name, "open"))
    }
}

/// What every hook of the cgroup at `path` holds, by hook name.
pub fn inspect(path: &Path) -> Result<BTreeMap<&'static str, HookState>> {
    let cgroup = open_cgroup(path)?;
    let mut out = BTreeMap::new();
    for hook in HOOKS {
        let ids =
            attached_programs(&cgroup, hook.attach_type).map_err(|source| EnforceError::Query {
                hook: hook.name,
                path: path.to_owned(),
                source,
            })?;
        let mut state = HookState::default();
        for id in ids {
            // A program that vanished between the two calls is not ours to count.
            match program_name(id) {
                Ok(name) if name.starts_with(PROGRAM_PREFIX) => state.ours.push(id),
                Ok(_) => state.foreign.push(id),
                Err(_) => {}
            }
        }
        out.insert(hook.name, state);
    }
    Ok(out)
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let load_err = |e| EnforceError::LoadProgram {
        program: name,
        source: Box::new(e),
    };
    let prog = ebpf
        .program_mut(name)
        .ok_or(EnforceError::MissingProgram { program: name })?;
    if let Ok(p) = <&mut CgroupSkb>::try_from(&mut *prog) {
        return p.load().map_err(load_err);
    }
    let p = <&mut CgroupSockAddr>::try_from(prog).map_err(load_err)?;
    p.load().map_err(load_err)
}

fn open_cgroup(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| EnforceError::OpenCgroup {
        path: path.to_owned(),
        source,
    })
}

/// Removes a pinned link; the link (and the attachment) goes when its last
/// reference, the one we hold here, is dropped. A missing pin is fine.
fn unpin(pin: &Path) -> Result<()> {
    let link = match PinnedLink::from_pin(pin) {
        Ok(link) => link,
        Err(_) if !pin.exists() => return Ok(()),
        Err(e) => {
            return Err(EnforceError::Unpin {
                pin: pin.to_owned(),
                source: Box::new(e),
            })
        }
    };
    let fd_link = link.unpin().map_err(|e| EnforceError::Unpin {
        pin: pin.to_owned(),
        source: Box::new(e),
    })?;
    drop(fd_link);
    Ok(())
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(aya::maps::MapError) -> EnforceError {
    move |e| EnforceError::Map {
        map,
        op,
        source: Box::new(e),
    }
}

/// A removal of an entry that is not there counts as done. aya 0.14 reports
/// it as the syscall's ENOENT rather than as `KeyNotFound`.
fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// An address in the 16-byte form the programs use (IPv4 v4-mapped).
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_stored_v4_mapped() {
        let a = addr16("10.1.2.3".parse().unwrap());
        assert_eq!(a, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        let b = addr16("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn hooks_have_distinct_pins_and_attach_types() {
        for (i, a) in HOOKS.iter().enumerate() {
            for b in &HOOKS[i + 1..] {
                assert_ne!(a.pin, b.pin);
                assert_ne!(a.attach_type, b.attach_type);
            }
            assert!(a.program.starts_with(PROGRAM_PREFIX));
        }
    }
}

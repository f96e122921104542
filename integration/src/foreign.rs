//! "Another tool's" cgroup program, for tests that check Stockade lives
//! beside it (case C07).
//!
//! The program is built here from two instructions (`r0 = 1; exit`: pass
//! every packet) and loaded with raw `bpf(2)` calls, so it needs no object
//! file and shares no code with the agent. It is attached the old way,
//! with `BPF_PROG_ATTACH`, as most tools still do, either beside others
//! (`BPF_F_ALLOW_MULTI`) or exclusively (flags 0), which forbids programs
//! in the cgroups below at the same hook.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

/// `enum bpf_cmd` values used here.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `BPF_PROG_TYPE_CGROUP_SKB`.
const PROG_TYPE_CGROUP_SKB: u32 = 8;

/// `BPF_F_ALLOW_MULTI`.
const F_ALLOW_MULTI: u32 = 1 << 1;

/// Size of the verifier log asked for when a load fails.
const LOG_BYTES: usize = 64 * 1024;

/// The cgroup_skb hooks a foreign program can sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkbHook {
    Ingress,
    Egress,
}

impl SkbHook {
    /// `enum bpf_attach_type`.
    fn attach_type(self) -> u32 {
        match self {
            Self::Ingress => 0,
            Self::Egress => 1,
        }
    }
}

/// How the foreign program shares its hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `BPF_F_ALLOW_MULTI`: other programs may run beside and below it.
    Multi,
    /// Flags 0: no program may be attached below it at this hook.
    Exclusive,
}

impl Sharing {
    fn flags(self) -> u32 {
        match self {
            Self::Multi => F_ALLOW_MULTI,
            Self::Exclusive => 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForeignError {
    #[error("the kernel refused to load the foreign program {name}; verifier log: {log}")]
    Load {
        name: String,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the id of the foreign program {name}")]
    Info {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused to attach {name} to {path} at {hook:?} ({sharing:?})")]
    Attach {
        name: String,
        path: PathBuf,
        hook: SkbHook,
        sharing: Sharing,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = ForeignError> = std::result::Result<T, E>;

/// `struct bpf_insn`: opcode, dst and src registers (4 bits each), offset,
/// immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = 1; exit`: a cgroup_skb program that passes every packet.
const PASS_ALL: [Insn; 2] = [
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    Insn {
        code: 0xb7,
        regs: 0,
        off: 0,
        imm: 1,
    },
    // BPF_JMP | BPF_EXIT
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to
/// `expected_attach_type`; the kernel treats the rest as zero.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH`/`BPF_PROG_DETACH` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`, up to `id`.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
}

/// Calls `bpf(2)`; `attr` must be the member of `union bpf_attr` that `cmd`
/// reads and writes, and every pointer in it must be valid for the call.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `repr(C)` struct laid
    // out as the kernel expects for `cmd`, and its exact size is passed, so
    // the kernel touches only its bytes; the callers point its pointer
    // fields at buffers that outlive this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// A foreign pass-all program attached to one cgroup at one hook. Dropping
/// it detaches it and unloads it.
pub struct ForeignProgram {
    name: String,
    prog: OwnedFd,
    id: u32,
    cgroup: File,
    hook: SkbHook,
}

impl ForeignProgram {
    /// Loads a program called `name` (at most 15 characters of
    /// `[A-Za-z0-9_.]`) and attaches it to the cgroup at `path`.
    pub fn attach(name: &str, path: &Path, hook: SkbHook, sharing: Sharing) -> Result<Self> {
        let prog = load(name, hook)?;
        let id = program_id(&prog).map_err(|source| ForeignError::Info {
            name: name.to_owned(),
            source,
        })?;
        let cgroup = File::open(path).map_err(|source| ForeignError::OpenCgroup {
            path: path.to_owned(),
            source,
        })?;

        let mut attr = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: hook.attach_type(),
            attach_flags: sharing.flags(),
            ..Default::default()
        };
        bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| ForeignError::Attach {
            name: name.to_owned(),
            path: path.to_owned(),
            hook,
            sharing,
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            prog,
            id,
            cgroup,
            hook,
        })
    }

    /// The kernel's id of the program, as `BPF_PROG_QUERY` lists it.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ForeignProgram {
    fn drop(&mut self) {
        let mut attr = AttachAttr {
            target_fd: self.cgroup.as_raw_fd() as u32,
            attach_bpf_fd: self.prog.as_raw_fd() as u32,
            attach_type: self.hook.attach_type(),
            ..Default::default()
        };
        // ENOENT: the cgroup went first and took the attachment with it.
        if let Err(err) = bpf(BPF_PROG_DETACH, &mut attr) {
            if err.raw_os_error() != Some(libc::ENOENT) {
                eprintln!(
                    "foreign: cannot detach {} (id {}): {err}",
                    self.name, self.id
                );
            }
        }
    }
}

/// Loads [`PASS_ALL`]; on failure loads it again with a verifier log, so
/// the error says why.
fn load(name: &str, hook: SkbHook) -> Result<OwnedFd> {
    match load_with_log(name, hook, None) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; LOG_BYTES];
            let _ = load_with_log(name, hook, Some(&mut log));
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]).trim().to_owned();
            Err(ForeignError::Load {
                name: name.to_owned(),
                log,
                source: first,
            })
        }
    }
}

fn load_with_log(name: &str, hook: SkbHook, log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut prog_name = [0u8; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let mut attr = LoadAttr {
        prog_type: PROG_TYPE_CGROUP_SKB,
        insn_cnt: PASS_ALL.len() as u32,
        insns: PASS_ALL.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name,
        expected_attach_type: hook.attach_type(),
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel just returned this new descriptor and nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn program_id(prog: &OwnedFd) -> io::Result<u32> {
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.id)
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        // Offsets from include/uapi/linux/bpf.h.
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(offset_of!(LoadAttr, log_buf), 32);
        assert_eq!(offset_of!(LoadAttr, prog_name), 48);
        assert_eq!(offset_of!(LoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(AttachAttr, attach_flags), 12);
        assert_eq!(offset_of!(AttachAttr, expected_revision), 24);
        assert_eq!(size_of::<InfoAttr>(), 16);
    }
}

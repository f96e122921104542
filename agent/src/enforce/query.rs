//! Asking the kernel what is attached to a cgroup.
//!
//! aya 0.14 offers no public query for cgroup programs, so this module
//! makes the two `bpf(2)` calls it needs itself: `BPF_PROG_QUERY` for the
//! ids of the programs attached to a cgroup at one hook, and
//! `BPF_PROG_GET_FD_BY_ID` + `BPF_OBJ_GET_INFO_BY_FD` for a program's name.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

/// `enum bpf_cmd` values used here.
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;

/// The most programs one hook of one cgroup is expected to hold.
const MAX_PROGS: usize = 64;

/// The `query` member of `union bpf_attr`, as laid out by the kernel.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The `BPF_*_GET_FD_BY_ID` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
    fd_by_id_token_fd: i32,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`, up to and including `name`.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

/// Calls `bpf(2)` with `attr`, which must be the member of `union bpf_attr`
/// that `cmd` reads and writes.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `repr(C)` struct laid
    // out as the kernel expects for `cmd`, and its exact size is passed, so
    // the kernel reads and writes only inside it. Pointers inside `attr`
    // (set by the callers) point to buffers that outlive this call.
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

/// Ids of the programs attached directly to `cgroup` at `attach_type`
/// (`enum bpf_attach_type`), in the order the kernel runs them.
pub fn attached_programs(cgroup: impl AsFd, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; MAX_PROGS];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_fd().as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MAX_PROGS as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// The name the program with `id` was loaded with.
pub fn program_name(id: u32) -> io::Result<String> {
    let mut get = GetIdAttr {
        id,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut get)?;
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it, so `OwnedFd` may close it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    let mut head = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut head as *mut ProgInfoHead as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;

    let end = head
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(head.name.len());
    Ok(String::from_utf8_lossy(&head.name[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        // Offsets from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_cnt), 24);
        assert_eq!(std::mem::offset_of!(QueryAttr, link_ids), 40);
        assert_eq!(std::mem::size_of::<QueryAttr>(), 64);
        assert_eq!(std::mem::offset_of!(ProgInfoHead, name), 64);
        assert_eq!(std::mem::size_of::<InfoAttr>(), 16);
    }
}

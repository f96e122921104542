//! Reads the refused attempts the kernel programs report and files them
//! under their isolation, with a log line each.

use std::{
    net::Ipv6Addr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use stockade_ebpf::abi::{StkEvent, STK_EV_CONNECT_REFUSED};
use stockade_proto::v1;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::agent::Agent;

/// Runs until the ring buffer fails; spawn it on the runtime.
pub async fn run(agent: Arc<Agent>, ring: RingBuf<MapData>) {
    // SAFETY: the ring buffer owns its map descriptor and keeps it open,
    // unchanged, until it is dropped, which happens only after the AsyncFd
    // that owns it is dropped.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => return warn!(error = %e, "cannot watch the refusal ring buffer"),
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => return warn!(error = %e, "the refusal ring buffer failed"),
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(ev) = StkEvent::from_bytes(&item) {
                let (pod, refusal) = to_refusal(&ev);
                agent.record_refusal(pod, refusal);
            }
        }
        guard.clear_ready();
    }
}

/// The refusal of a kernel event, and the pod cgroup it belongs to.
pub fn to_refusal(ev: &StkEvent) -> (u64, v1::Refusal) {
    let addr = Ipv6Addr::from(ev.addr);
    let destination = match addr.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => addr.to_string(),
    };
    let comm_end = ev
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(ev.comm.len());
    let comm = String::from_utf8_lossy(&ev.comm[..comm_end]).into_owned();
    let kind = if ev.kind == STK_EV_CONNECT_REFUSED {
        "connect"
    } else {
        "sendmsg"
    };
    let protocol = match ev.proto {
        6 => v1::Protocol::Tcp,
        17 => v1::Protocol::Udp,
        1 | 58 => v1::Protocol::Icmp,
        _ => v1::Protocol::Any,
    };
    info!(
        cgroup.id = ev.pod_cgroup_id,
        refusal.kind = kind,
        refusal.destination = %destination,
        refusal.port = ev.port,
        process.pid = ev.pid,
        process.comm = %comm,
        "refused an attempt from an isolated pod"
    );
    let refusal = v1::Refusal {
        at: Some(wall_clock(ev.ktime_ns).into()),
        kind: kind.into(),
        destination,
        port: ev.port.into(),
        protocol: protocol as i32,
        pid: ev.pid,
        comm,
    };
    (ev.pod_cgroup_id, refusal)
}

/// Converts a CLOCK_MONOTONIC reading (what `bpf_ktime_get_ns` returns)
/// into wall-clock time.
fn wall_clock(ktime_ns: u64) -> SystemTime {
    let now = SystemTime::now();
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_ns = mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64;
    now - Duration::from_nanos(mono_ns.saturating_sub(ktime_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v4_mapped_destination_is_shown_as_ipv4() {
        let mut ev = StkEvent {
            kind: STK_EV_CONNECT_REFUSED,
            port: 443,
            proto: 6,
            pid: 7,
            ..Default::default()
        };
        ev.addr = "::ffff:10.0.0.9".parse::<Ipv6Addr>().unwrap().octets();
        ev.comm[..4].copy_from_slice(b"curl");
        let (_, r) = to_refusal(&ev);
        assert_eq!(r.destination, "10.0.0.9");
        assert_eq!(
            (r.kind.as_str(), r.port, r.comm.as_str()),
            ("connect", 443, "curl")
        );
        assert_eq!(r.protocol, v1::Protocol::Tcp as i32);
    }
}

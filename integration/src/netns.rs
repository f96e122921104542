//! A "server" network namespace on the pods' bridge: something outside the
//! pods that they can talk to, and that the tests fully own.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{containerd, sys};

/// A network namespace (`ip netns`) with one veth on the bridge
/// [`containerd::BRIDGE`], an address, and a default route via
/// [`containerd::GATEWAY`]. Drop kills the processes it spawned (by PID),
/// then deletes the namespace and the veth.
#[derive(Debug)]
pub struct PeerNs {
    name: String,
    ip: String,
    host_veth: String,
    children: Vec<Child>,
    created_run_netns: bool,
}

impl PeerNs {
    /// Creates namespace `name` with address `ip_cidr` (e.g.
    /// `10.213.0.250/24`) on the bridge, which must exist (it does while a
    /// [`containerd::Containerd`] runs).
    pub fn create(name: &str, ip_cidr: &str) -> Result<Self> {
        if !sys::link_exists(containerd::BRIDGE) {
            bail!(
                "bridge {} does not exist: start the containerd harness first",
                containerd::BRIDGE
            );
        }
        if name.is_empty() || name.contains('/') {
            bail!("bad namespace name {name:?}");
        }
        if Path::new("/run/netns").join(name).exists() {
            bail!("network namespace {name} exists already");
        }
        let ip = ip_cidr.split('/').next().unwrap_or(ip_cidr).to_owned();
        // Interface names are at most 15 bytes: derive a short unique one.
        let tag = format!("{:08x}", fnv(name) ^ std::process::id());
        let host_veth = format!("stkh{}", &tag[..8]);
        let peer_veth = format!("stkn{}", &tag[..8]);
        let ns = PeerNs {
            name: name.to_owned(),
            ip,
            host_veth: host_veth.clone(),
            children: Vec::new(),
            created_run_netns: !Path::new("/run/netns").exists(),
        };
        sys::ip(&["netns", "add", name])?;
        sys::ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", &peer_veth,
        ])?;
        sys::ip(&["link", "set", &peer_veth, "netns", name])?;
        sys::ip(&["link", "set", &host_veth, "master", containerd::BRIDGE])?;
        sys::ip(&["link", "set", &host_veth, "up"])?;
        sys::ip(&["-n", name, "link", "set", &peer_veth, "name", "eth0"])?;
        sys::ip(&["-n", name, "addr", "add", ip_cidr, "dev", "eth0"])?;
        sys::ip(&["-n", name, "link", "set", "eth0", "up"])?;
        sys::ip(&["-n", name, "link", "set", "lo", "up"])?;
        sys::ip(&[
            "-n",
            name,
            "route",
            "add",
            "default",
            "via",
            containerd::GATEWAY,
        ])?;
        // Had any step failed, dropping `ns` would have undone the others.
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's address, without prefix length.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Starts `argv` inside the namespace (stdin, stdout and stderr to
    /// /dev/null) and returns its PID. It is killed on drop.
    pub fn spawn(&mut self, argv: &[&str]) -> Result<u32> {
        // `ip netns exec` execs the command, so the PID is the command's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {argv:?} in netns {}", self.name))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Runs `argv` inside the namespace to completion, with a deadline.
    pub fn run(&self, argv: &[&str], timeout: Duration) -> Result<Output> {
        sys::run_with_timeout(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
            timeout,
        )
    }
}

/// A small stable hash, to derive interface names.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl Drop for PeerNs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if Path::new("/run/netns").join(&self.name).exists() {
            if let Err(e) = sys::ip(&["netns", "del", &self.name]) {
                eprintln!("peer netns cleanup: {e:#}");
            }
        }
        if sys::link_exists(&self.host_veth) {
            let _ = sys::ip(&["link", "del", &self.host_veth]);
        }
        if self.created_run_netns {
            let run_netns = Path::new("/run/netns");
            let empty = std::fs::read_dir(run_netns)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if empty {
                let _ = nix::mount::umount2(run_netns, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(run_netns);
            }
        }
    }
}

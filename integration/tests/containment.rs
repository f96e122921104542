//! Containment judged by the real kernel and a real runtime: freeze, thaw,
//! kill (cgroup.kill and the freeze-signal fallback), terminate, the exec
//! guard, and every error code (cases C04, C09, C10).
//!
//! Two parts, run in order by one process (`harness = false`):
//! - kernel cases on plain cgroups this test makes (a "pod" cgroup with
//!   nested "containers", a sibling outside it, a v1 `pids` limit so that
//!   fork loops stay bounded), calling the agent library directly;
//! - runtime cases on real pods of ONE private containerd, through the
//!   real `stockade-agent` binary and its gRPC API.
//!
//! Needs root, containerd, runc, the CNI plugins, busybox-static and
//! `cargo build --workspace --bins`; fails (never skips) without them. Only
//! one containerd harness runs at a time: while the `stk0` bridge of
//! another run exists, this waits. Positional arguments filter cases by
//! substring; `--list` lists them. Everything made is removed, also when a
//! case fails; processes are ended by PID only.

mod containment {
    pub mod agent;
    pub mod kernel;
    pub mod lab;
    pub mod pods;
}

use std::{
    panic::{self, AssertUnwindSafe},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use stockade_integration::{containerd, preflight, sys};

use containment::{kernel, pods};

/// A case on plain cgroups.
pub type Case = (&'static str, fn() -> Result<()>);
/// A case on the shared containerd and agent.
pub type PodCase = (&'static str, fn(&pods::World) -> Result<()>);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        let names = kernel::CASES
            .iter()
            .map(|c| c.0)
            .chain(pods::CASES.iter().map(|c| c.0));
        for name in names {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let kernel: Vec<Case> = kernel::CASES
        .iter()
        .filter(|c| wanted(c.0))
        .copied()
        .collect();
    let pods: Vec<PodCase> = pods::CASES
        .iter()
        .filter(|c| wanted(c.0))
        .copied()
        .collect();
    run_all(&kernel, &pods)
}

fn run_all(kernel: &[Case], pods: &[PodCase]) -> ExitCode {
    if let Err(e) = requirements() {
        println!("test containment ... FAILED: {e:#}");
        println!("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured");
        return ExitCode::FAILURE;
    }
    let mut failed = 0;
    for (name, case) in kernel {
        failed += usize::from(!run_case(name, case));
    }
    if !pods.is_empty() {
        failed += pods::with_world(|world| {
            pods.iter()
                .filter(|(name, case)| !run_case(name, || case(world)))
                .count()
        })
        .unwrap_or_else(|e| {
            println!("test containment runtime set-up ... FAILED: {e:#}");
            pods.len()
        });
    }
    let passed = (kernel.len() + pods.len()).saturating_sub(failed);
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("test result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one case, catching a panic as a failure.
fn run_case(name: &str, case: impl FnOnce() -> Result<()>) -> bool {
    let started = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(case));
    let took = started.elapsed();
    match result {
        Ok(Ok(())) => {
            println!("test {name} ... ok ({took:.1?})");
            true
        }
        Ok(Err(e)) => {
            println!("test {name} ... FAILED ({took:.1?}): {e:#}");
            false
        }
        Err(_) => {
            println!("test {name} ... FAILED: panicked");
            false
        }
    }
}

fn requirements() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the containment tests need root (cgroups, eBPF, containerd); run them as root");
    }
    preflight()?;
    containment::agent::Binaries::find()?;
    Ok(())
}

/// Waits while another containerd harness holds the `stk0` bridge.
pub fn wait_for_bridge(within: Duration) -> Result<()> {
    let started = Instant::now();
    let mut said = false;
    while sys::link_exists(containerd::BRIDGE) {
        if !said {
            println!(
                "waiting: another containerd harness holds {}",
                containerd::BRIDGE
            );
            said = true;
        }
        if started.elapsed() > within {
            bail!("{} still exists after {within:?}", containerd::BRIDGE);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(())
}

//! Kernel cases on plain cgroups, through the agent library (C04, C09).

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use stockade_agent::contain::{
    events,
    freeze::{self, read_freeze},
    kill::{self, KillMethod},
};
use stockade_integration::sys;

use super::lab::{Lab, DOUBLE_FORK, FORK_LOOP};

pub const CASES: &[crate::Case] = &[
    (
        "kernel_cgroup_kill_leaves_no_survivor_20_of_20",
        cgroup_kill_leaves_no_survivor,
    ),
    (
        "kernel_fallback_kill_leaves_no_survivor_and_spares_the_sibling_20_of_20",
        fallback_kill_leaves_no_survivor,
    ),
    (
        "kernel_freeze_is_reported_only_when_cgroup_events_says_so",
        freeze_reported_only_when_settled,
    ),
    (
        "kernel_freeze_then_thaw_resumes_and_freeze_then_kill_empties",
        freeze_thaw_then_kill,
    ),
];

const RUNS: usize = 20;
const KILL_DEADLINE: Duration = Duration::from_secs(5);

fn cgroup_kill_leaves_no_survivor() -> Result<()> {
    kill_runs(KillMethod::CgroupKill)
}

fn fallback_kill_leaves_no_survivor() -> Result<()> {
    kill_runs(KillMethod::FreezeSignal)
}

/// Fills the pod with a fork loop, a double-forked setsid process and a
/// sleeper in nested cgroups (C04), kills it, and checks that nothing is
/// left in it and that the process beside it lives; `RUNS` times.
fn kill_runs(method: KillMethod) -> Result<()> {
    let mut lab = Lab::new()?;
    let outside = lab.spawn("outside", "exec sleep 1000")?;
    lab.wait_for("outside", 1, Duration::from_secs(5))?;
    let mut times = Vec::new();
    for run in 1..=RUNS {
        let (took, before) = one_kill(&mut lab, method).with_context(|| format!("run {run}"))?;
        times.push(took);
        ensure!(
            sys::pid_alive(outside),
            "run {run}: the process beside the pod died"
        );
        ensure!(
            lab.pids("outside")? == vec![outside],
            "run {run}: the sibling cgroup changed"
        );
        if run == 1 {
            println!("   {} processes in the pod when killed", before);
        }
    }
    times.sort();
    println!(
        "   {} kill: median {:.2?}, worst {:.2?} over {RUNS} runs, 0 survivors",
        method.as_str(),
        times[RUNS / 2],
        times[RUNS - 1]
    );
    Ok(())
}

fn one_kill(lab: &mut Lab, method: KillMethod) -> Result<(Duration, usize)> {
    lab.spawn("pod/c1", FORK_LOOP)?;
    lab.spawn("pod/c2/inner/a", DOUBLE_FORK)?;
    lab.spawn("pod/c2/inner/b", "exec sleep 1000")?;
    let before = lab.wait_for("pod", 100, Duration::from_secs(10))?;
    lab.wait_for("pod/c2/inner/a", 3, Duration::from_secs(5))?;

    let started = Instant::now();
    let deadline = started + KILL_DEADLINE;
    let killed = kill::kill(&lab.cgroups(), &lab.rel("pod"), method, deadline)?;
    let took = started.elapsed();

    ensure!(!killed.events.populated, "reply says populated: {killed:?}");
    let left = lab.pids("pod")?;
    ensure!(left.is_empty(), "{} survivor(s): {left:?}", left.len());
    let now = events::read(&lab.dir("pod"))?;
    ensure!(
        !now.populated,
        "cgroup.events says populated after the kill"
    );
    ensure!(!read_freeze(&lab.dir("pod"))?, "the pod was left frozen");
    if method == KillMethod::FreezeSignal {
        ensure!(killed.signalled > 0, "the fallback signalled nobody");
    }
    lab.reap()?;
    Ok((took, before))
}

fn freeze_reported_only_when_settled() -> Result<()> {
    let mut lab = Lab::new()?;
    lab.spawn("pod/c1", FORK_LOOP)?;
    lab.spawn("pod/c2", DOUBLE_FORK)?;
    lab.wait_for("pod", 200, Duration::from_secs(10))?;
    let dir = lab.dir("pod");
    let (mut settled, mut late) = (0, 0);
    for attempt in 1..=10 {
        // A deadline that has passed already: the kernel must say frozen
        // at the first reading, or the freeze is undone and reported late.
        match freeze::freeze(&dir, Instant::now()) {
            Ok(s) => {
                ensure!(
                    s.events.frozen,
                    "attempt {attempt}: reported frozen without frozen 1"
                );
                ensure!(events::read(&dir)?.frozen, "attempt {attempt}: not frozen");
                settled += 1;
            }
            Err(e) => {
                ensure!(e.is_deadline(), "attempt {attempt}: {e:#}");
                ensure!(!read_freeze(&dir)?, "attempt {attempt}: freeze not undone");
                late += 1;
            }
        }
        freeze::thaw(&dir, Instant::now() + Duration::from_secs(5))?;
    }
    println!("   zero-deadline freezes: {settled} confirmed at once, {late} undone and reported");
    let full = freeze::freeze(&dir, Instant::now() + Duration::from_secs(5))?;
    ensure!(full.events.frozen && events::read(&dir)?.frozen);
    Ok(())
}

fn freeze_thaw_then_kill() -> Result<()> {
    let mut lab = Lab::new()?;
    let file = std::env::temp_dir().join(format!("stk-ticks-{}", std::process::id()));
    let ticker = format!(
        "while true; do echo x >> {}; sleep 0.02; done",
        file.display()
    );
    lab.spawn("pod/c1", &ticker)?;
    lab.wait_for("pod", 1, Duration::from_secs(5))?;
    let dir = lab.dir("pod");
    std::thread::sleep(Duration::from_millis(200));

    let frozen = freeze::freeze(&dir, Instant::now() + Duration::from_secs(5))?;
    ensure!(frozen.events.frozen && frozen.events.populated);
    let at_freeze = ticks(&file);
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        ticks(&file) == at_freeze,
        "the pod kept running while frozen"
    );

    let thawed = freeze::thaw(&dir, Instant::now() + Duration::from_secs(5))?;
    ensure!(!thawed.events.frozen);
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        ticks(&file) > at_freeze,
        "the pod did not run again after thaw"
    );

    freeze::freeze(&dir, Instant::now() + Duration::from_secs(5))?;
    let deadline = Instant::now() + KILL_DEADLINE;
    let killed = kill::kill(
        &lab.cgroups(),
        &lab.rel("pod"),
        KillMethod::CgroupKill,
        deadline,
    )?;
    ensure!(!killed.events.populated && lab.pids("pod")?.is_empty());
    let _ = fs::remove_file(&file);
    Ok(())
}

fn ticks(file: &std::path::Path) -> usize {
    fs::read_to_string(file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

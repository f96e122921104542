//! Runtime cases on real pods of one private containerd, through the real
//! agent binary (C04, C09, C10, the exec guard, every error code).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use stockade_agent::cgroup::Cgroup2;
use stockade_integration::{sys, Containerd, Pod, PodSpec};
use stockade_proto::v1::{
    self, pod_selector::Target, GetInfoRequest, KillMethod, PodName, PodSelector, RuntimeOutcome,
};
use tonic::Code;

use super::{
    agent::{Agent, AgentSpec},
    lab::{DOUBLE_FORK, PIDS_MAX},
};

/// The containerd and the agent every case shares.
pub struct World {
    pub cd: Containerd,
    pub agent: Agent,
}

pub const CASES: &[crate::PodCase] = &[
    (
        "pod_kill_leaves_no_survivor_on_real_pods",
        pod_kill_no_survivor,
    ),
    (
        "pod_container_whose_pid1_is_a_shell_is_killed_c10",
        pid1_shell_killed,
    ),
    (
        "pod_kill_with_a_stopped_shim_or_no_runtime_still_kills_c10",
        stopped_shim,
    ),
    ("pod_freeze_thaw_and_kill", freeze_thaw_kill),
    (
        "pod_forced_fallback_kill_kills_the_pod_and_nothing_else",
        fallback_kill,
    ),
    (
        "pod_freeze_and_kill_compose_with_isolation",
        compose_with_isolation,
    ),
    (
        "pod_exec_guard_kills_execs_in_the_contained_pod_only",
        exec_guard,
    ),
    ("pod_every_error_answers_with_its_code", error_codes),
    (
        "pod_exec_guard_outlives_an_agent_crash_and_attaches_once",
        guard_restart,
    ),
    (
        "pod_terminate_kills_then_deletes_through_the_api",
        terminate,
    ),
    (
        "pod_containment_dry_runs_change_nothing",
        containment_dry_runs,
    ),
    (
        "pod_containment_orders_act_once_per_order_id",
        containment_once_per_id,
    ),
    (
        "pod_concurrent_freeze_and_thaw_take_turns",
        freeze_thaw_turns,
    ),
];

/// Starts one containerd and the main agent (pointed at its CRI socket,
/// 1 s runtime deadline), runs `cases`, and removes everything.
pub fn with_world(cases: impl FnOnce(&World) -> usize) -> Result<usize> {
    crate::wait_for_bridge(Duration::from_secs(1200))?;
    // Removed last, also when a step below fails.
    let base = tempfile::Builder::new()
        .prefix("stk-contain-cd-")
        .tempdir()?;
    let cd = Containerd::start(&base.path().join("cd"))?;
    let socket = cd.socket().display().to_string();
    let agent = Agent::start(&AgentSpec::new("main", &socket))?;
    let world = World { cd, agent };
    let failed = cases(&world);
    drop(world);
    drop(base);
    Ok(failed)
}

// ---------------------------------------------------------------------------
// Helpers

fn by_name(pod: &Pod<'_>) -> Option<PodSelector> {
    Some(PodSelector {
        target: Some(Target::Name(PodName {
            namespace: pod.spec().namespace.clone(),
            name: pod.spec().name.clone(),
        })),
    })
}

fn by_uid(uid: &str) -> Option<PodSelector> {
    Some(PodSelector {
        target: Some(Target::Uid(uid.to_owned())),
    })
}

fn kill_req(pod: Option<PodSelector>, container: &str) -> v1::KillRequest {
    v1::KillRequest {
        pod,
        container: container.into(),
        reason: "containment test".into(),
        timeout_ms: 5000,
        ..Default::default()
    }
}

/// One kill order to `agent`.
fn kill(agent: &Agent, req: v1::KillRequest) -> Result<v1::KillResponse, tonic::Status> {
    agent.rpc(|mut c| async move { c.kill(req).await })
}

fn cgroups() -> Result<Cgroup2> {
    Ok(Cgroup2::at(sys::cgroup2_mount()?))
}

fn pod_rel(pod: &Pod<'_>) -> Result<String> {
    pod.spec().cgroup_parent()
}

/// Processes in the pod's cgroup2 directory and below; none when gone.
fn pod_pids(pod: &Pod<'_>) -> Result<Vec<u32>> {
    match cgroups()?.pids_recursive(&pod_rel(pod)?) {
        Ok(pids) => Ok(pids),
        Err(e) if e.is_gone() => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn wait_pids(pod: &Pod<'_>, n: usize, within: Duration) -> Result<usize> {
    let started = Instant::now();
    loop {
        let count = pod_pids(pod)?.len();
        if count >= n {
            return Ok(count);
        }
        if started.elapsed() > within {
            bail!(
                "pod {} holds {count} processes, wanted {n}",
                pod.spec().name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fork loop that waits for `/tmp/go`, so that the pids limit is set
/// before the first fork.
fn gated_fork_loop() -> String {
    format!(
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; {}",
        super::lab::FORK_LOOP
    )
}

/// Limits the pod's processes (v1 pids controller), then lets its fork
/// loop start.
fn limit_and_go(pod: &Pod<'_>, container: &str) -> Result<()> {
    let rel = pod_rel(pod)?;
    let max = Path::new("/sys/fs/cgroup/pids")
        .join(rel.trim_start_matches('/'))
        .join("pids.max");
    fs::write(&max, PIDS_MAX.to_string()).with_context(|| format!("writing {}", max.display()))?;
    let (code, _, err) = pod.exec(container, &["touch", "/tmp/go"], Duration::from_secs(10))?;
    ensure!(code == 0, "touch /tmp/go failed: {err}");
    Ok(())
}

/// A pod whose processes fork as fast as they may (C09), double-fork with
/// setsid, and sleep in a second container.
fn bomb_pod<'a>(cd: &'a Containerd, name: &str) -> Result<Pod<'a>> {
    let spec = PodSpec::new("contain", name)
        .container("loop", &["sh", "-c", &gated_fork_loop()])
        .container("orphans", &["sh", "-c", DOUBLE_FORK])
        .container("sleeper", &["sleep", "3600"]);
    let pod = Pod::run(cd, spec)?;
    limit_and_go(&pod, "loop")?;
    wait_pids(&pod, 100, Duration::from_secs(20))?;
    Ok(pod)
}

fn sleeper_pod<'a>(cd: &'a Containerd, name: &str) -> Result<Pod<'a>> {
    Pod::run(
        cd,
        PodSpec::new("contain", name).container("app", &["sleep", "3600"]),
    )
}

/// Checks a kill reply against the kernel: populated 0 said and true.
fn check_killed(reply: &v1::KillResponse, pod: &Pod<'_>) -> Result<Duration> {
    let events = reply.events.context("no events in the reply")?;
    ensure!(!events.populated, "the reply says populated: {events:?}");
    let left = pod_pids(pod)?;
    ensure!(
        left.is_empty(),
        "{} survivor(s) in the pod: {left:?}",
        left.len()
    );
    elapsed(reply.received_at.as_ref(), reply.verified_at.as_ref())
}

fn elapsed(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Result<Duration> {
    let at = |t: Option<&prost_types::Timestamp>| -> Result<SystemTime> {
        Ok(SystemTime::try_from(
            t.cloned().context("missing timestamp")?,
        )?)
    };
    Ok(at(to)?.duration_since(at(from)?)?)
}

fn runtime_outcomes(reply: &v1::KillResponse) -> Vec<(String, RuntimeOutcome, String)> {
    reply
        .runtime
        .iter()
        .map(|s| {
            let outcome = RuntimeOutcome::try_from(s.outcome).unwrap_or_default();
            (s.container_name.clone(), outcome, s.detail.clone())
        })
        .collect()
}

/// The shim of `sandbox`: its arguments hold this containerd's socket and
/// `-id <sandbox>`.
fn shim_pid(cd: &Containerd, sandbox: &str) -> Result<u32> {
    let socket = cd.socket().as_os_str().as_encoded_bytes();
    let found: Vec<u32> = sys::pids_with_arg(socket)
        .into_iter()
        .filter(|pid| Some(*pid) != cd.pid())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"-id" && w[1] == sandbox.as_bytes())
        })
        .collect();
    match found.as_slice() {
        [pid] => Ok(*pid),
        other => bail!("expected one shim for sandbox {sandbox}, found {other:?}"),
    }
}

/// A shim stopped with SIGSTOP, resumed by PID when dropped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        sys::signal_pid(pid, Signal::SIGSTOP);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        sys::signal_pid(self.0, Signal::SIGCONT);
    }
}

// ---------------------------------------------------------------------------
// Cases

fn pod_kill_no_survivor(w: &World) -> Result<()> {
    let bystander = sleeper_pod(&w.cd, "bystander")?;
    let outside = bystander.container_pid("app")?;
    for run in 1..=3 {
        let pod = bomb_pod(&w.cd, &format!("bomb-{run}"))?;
        let before = pod_pids(&pod)?.len();
        let reply =
            kill(&w.agent, kill_req(by_name(&pod), "")).map_err(|s| anyhow!("kill: {s}"))?;
        let took = check_killed(&reply, &pod).with_context(|| format!("run {run}"))?;
        ensure!(reply.method == KillMethod::CgroupKill as i32);
        let answers = runtime_outcomes(&reply);
        ensure!(
            answers.len() == 3 && answers.iter().all(|a| a.1 == RuntimeOutcome::Ok),
            "runtime answers: {answers:?}"
        );
        ensure!(
            sys::pid_alive(outside),
            "run {run}: the bystander pod's process died"
        );
        println!("   run {run}: {before} processes killed, order to verified {took:.1?}");
    }
    Ok(())
}

fn pid1_shell_killed(w: &World) -> Result<()> {
    let spec = PodSpec::new("contain", "pid1")
        .container("shell", &["sh", "-c", "while true; do sleep 1; done"])
        .container("other", &["sleep", "3600"]);
    let pod = Pod::run(&w.cd, spec)?;
    let pid1 = pod.container_pid("shell")?;
    let other = pod.container_pid("other")?;
    let reply =
        kill(&w.agent, kill_req(by_name(&pod), "shell")).map_err(|s| anyhow!("kill: {s}"))?;
    let events = reply.events.context("no events")?;
    ensure!(!events.populated, "{events:?}");
    let started = Instant::now();
    while sys::pid_alive(pid1) && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    ensure!(!sys::pid_alive(pid1), "the shell PID 1 survived");
    ensure!(sys::pid_alive(other), "the other container died too");
    ensure!(reply.cgroup_path.ends_with(&pod.container_id("shell")?));
    let answers = runtime_outcomes(&reply);
    ensure!(
        answers.len() == 1 && answers[0].1 == RuntimeOutcome::Ok,
        "{answers:?}"
    );
    Ok(())
}

fn stopped_shim(w: &World) -> Result<()> {
    let hung = bomb_pod(&w.cd, "hung")?;
    let shim = Stopped::new(shim_pid(&w.cd, hung.sandbox_id())?);
    let socket = w.agent.socket();
    // Another order while the kill waits for the runtime: it must not wait.
    let other = std::thread::spawn(move || -> Result<Duration> {
        std::thread::sleep(Duration::from_millis(300));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let ch = stockade_agent::uds::connect(&socket, Duration::from_secs(5)).await?;
            let mut client = v1::stockade_client::StockadeClient::new(ch);
            let started = Instant::now();
            client.get_info(GetInfoRequest {}).await?;
            Ok(started.elapsed())
        })
    });
    let started = Instant::now();
    let reply = kill(&w.agent, kill_req(by_name(&hung), ""))
        .map_err(|s| anyhow!("kill with a stopped shim: {s}"));
    let waited = started.elapsed();
    let other = other.join().map_err(|_| anyhow!("panicked"))??;
    let reply = reply?;
    let took = check_killed(&reply, &hung)?;
    let answers = runtime_outcomes(&reply);
    ensure!(
        !answers.is_empty() && answers.iter().all(|a| a.1 == RuntimeOutcome::NoAnswer),
        "runtime answers with the shim stopped: {answers:?}"
    );
    ensure!(
        answers[0].2.contains("did not answer within 1s"),
        "{answers:?}"
    );
    ensure!(
        took < Duration::from_secs(1),
        "the kill waited for the runtime: {took:?}"
    );
    ensure!(waited < Duration::from_secs(4), "the reply took {waited:?}");
    ensure!(
        other < Duration::from_millis(500),
        "GetInfo was held up {other:?}"
    );
    println!(
        "   stopped shim: killed and verified in {took:.1?}, reply after {waited:.1?} \
         ({}), GetInfo meanwhile {other:.1?}",
        answers[0].2
    );
    drop(shim);

    let nowhere = Agent::start(&AgentSpec::new("nowhere", "/nonexistent/stockade/cri.sock"))?;
    let lone = bomb_pod(&w.cd, "lone")?;
    let shim = Stopped::new(shim_pid(&w.cd, lone.sandbox_id())?);
    let uid = lone.uid().to_owned();
    let reply = kill(&nowhere, kill_req(by_uid(&uid), ""))
        .map_err(|s| anyhow!("kill without a runtime: {s}"))?;
    let took = check_killed(&reply, &lone)?;
    let answers = runtime_outcomes(&reply);
    ensure!(
        !answers.is_empty() && answers.iter().all(|a| a.1 == RuntimeOutcome::Unreachable),
        "runtime answers with no runtime: {answers:?}"
    );
    println!(
        "   no runtime: killed and verified in {took:.1?}, runtime: {}",
        answers[0].2
    );
    drop(shim);
    Ok(())
}

/// Voluntary context switches of `pid`: they grow while it runs a loop of
/// sleeps, and stop while it is frozen.
fn switches(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no voluntary_ctxt_switches")
}

fn freeze_thaw_kill(w: &World) -> Result<()> {
    let spec = PodSpec::new("contain", "ice")
        .container("app", &["sh", "-c", "while true; do sleep 0.05; done"]);
    let pod = Pod::run(&w.cd, spec)?;
    let pid = pod.container_pid("app")?;
    let dir = pod.cgroup_dir()?;
    let freeze = || v1::FreezeRequest {
        pod: by_name(&pod),
        reason: "forensics".into(),
        timeout_ms: 5000,
        ..Default::default()
    };

    let reply = w
        .agent
        .rpc(|mut c| async move { c.freeze(freeze()).await })
        .map_err(|s| anyhow!("freeze: {s}"))?;
    let events = reply.events.context("no events")?;
    ensure!(events.frozen && events.populated, "{events:?}");
    let kernel = fs::read_to_string(dir.join("cgroup.events"))?;
    ensure!(kernel.contains("frozen 1"), "cgroup.events: {kernel}");
    let before = switches(pid)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(switches(pid)? == before, "the frozen shell kept running");

    let thaw = v1::ThawRequest {
        pod: by_name(&pod),
        ..Default::default()
    };
    let reply = w
        .agent
        .rpc(|mut c| async move { c.thaw(thaw).await })
        .map_err(|s| anyhow!("thaw: {s}"))?;
    ensure!(!reply.events.context("no events")?.frozen);
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        switches(pid)? > before,
        "the thawed shell did not run again"
    );
    ensure!(sys::pid_alive(pid), "the pod died on thaw");

    w.agent
        .rpc(|mut c| async move { c.freeze(freeze()).await })
        .map_err(|s| anyhow!("second freeze: {s}"))?;
    let reply = kill(&w.agent, kill_req(by_name(&pod), ""))
        .map_err(|s| anyhow!("kill of a frozen pod: {s}"))?;
    check_killed(&reply, &pod)?;
    Ok(())
}

fn fallback_kill(w: &World) -> Result<()> {
    let mut spec = AgentSpec::new("fallback", "none");
    spec.kill_method = "freeze-signal";
    let fallback = Agent::start(&spec)?;
    let bystander = sleeper_pod(&w.cd, "beside")?;
    let outside = bystander.container_pid("app")?;
    let pod = bomb_pod(&w.cd, "fallback")?;
    let before = pod_pids(&pod)?.len();
    let uid = pod.uid().to_owned();
    let reply =
        kill(&fallback, kill_req(by_uid(&uid), "")).map_err(|s| anyhow!("fallback kill: {s}"))?;
    let took = check_killed(&reply, &pod)?;
    ensure!(
        reply.method == KillMethod::FreezeSignal as i32,
        "method {}",
        reply.method
    );
    ensure!(reply.signalled > 0, "nobody signalled");
    ensure!(reply.runtime.is_empty(), "no runtime was configured");
    ensure!(sys::pid_alive(outside), "the pod beside died");
    let freeze = fs::read_to_string(pod.cgroup_dir()?.join("cgroup.freeze")).unwrap_or_default();
    ensure!(freeze.trim() != "1", "the pod was left frozen");
    println!(
        "   fallback: {before} processes, {} signalled, verified in {took:.1?}",
        reply.signalled
    );
    Ok(())
}

fn compose_with_isolation(w: &World) -> Result<()> {
    let pod = sleeper_pod(&w.cd, "both")?;
    let isolate = v1::IsolateRequest {
        pod: by_name(&pod),
        reason: "containment test".into(),
        ..Default::default()
    };
    w.agent
        .rpc(|mut c| async move { c.isolate(isolate).await })
        .map_err(|s| anyhow!("isolate: {s}"))?;
    let freeze = v1::FreezeRequest {
        pod: by_name(&pod),
        reason: "isolated and frozen".into(),
        timeout_ms: 0,
        ..Default::default()
    };
    let frozen = w
        .agent
        .rpc(|mut c| async move { c.freeze(freeze).await })
        .map_err(|s| anyhow!("freeze of an isolated pod: {s}"))?;
    ensure!(
        frozen.pod.as_ref().is_some_and(|p| p.isolated),
        "not shown isolated"
    );
    let reply = kill(&w.agent, kill_req(by_name(&pod), ""))
        .map_err(|s| anyhow!("kill of an isolated pod: {s}"))?;
    check_killed(&reply, &pod)?;
    let listed = w
        .agent
        .rpc(|mut c| async move { c.list_isolations(v1::ListIsolationsRequest {}).await })
        .map_err(|s| anyhow!("list: {s}"))?;
    ensure!(
        listed.isolations.len() == 1,
        "the isolation is not kept after the kill"
    );
    let release = v1::ReleaseRequest {
        pod: by_name(&pod),
        reason: "done".into(),
        ..Default::default()
    };
    w.agent
        .rpc(|mut c| async move { c.release(release).await })
        .map_err(|s| anyhow!("release after kill: {s}"))?;
    Ok(())
}

fn exec_guard(w: &World) -> Result<()> {
    let contained = sleeper_pod(&w.cd, "guarded")?;
    let free = sleeper_pod(&w.cd, "free")?;
    let contain = v1::ContainRequest {
        pod: by_name(&contained),
        reason: "containment test".into(),
        ..Default::default()
    };
    let reply = w
        .agent
        .rpc(|mut c| async move { c.contain(contain).await })
        .map_err(|s| anyhow!("contain: {s}"))?;
    // The hook is BPF-LSM exactly where the agent reports it available;
    // where it is missing (here: the kernel refuses the load), the reason
    // is said and the tracepoint carries the guard.
    let info = w
        .agent
        .rpc(|mut c| async move { c.get_info(GetInfoRequest {}).await })
        .map_err(|s| anyhow!("info: {s}"))?;
    let lsm = info
        .features
        .iter()
        .find(|f| f.name == "bpf_lsm")
        .context("no bpf_lsm feature reported")?;
    let wanted = match lsm.available {
        true => "lsm/bprm_check_security",
        false => "tracepoint/sched/sched_process_exec",
    };
    ensure!(
        reply.hook == wanted,
        "hook {} with bpf_lsm {lsm:?}",
        reply.hook
    );
    ensure!(
        lsm.available || !lsm.detail.is_empty(),
        "bpf_lsm is missing without a reason"
    );
    println!(
        "   exec guard hook: {} (bpf_lsm: {})",
        reply.hook,
        or_reason(lsm)
    );

    let argv = ["sh", "-c", "echo ran"];
    let guarded = contained.exec("app", &argv, Duration::from_secs(10));
    let (code, out, _) = free.exec("app", &argv, Duration::from_secs(10))?;
    ensure!(
        code == 0 && out == "ran\n",
        "exec in the free pod: {code} {out:?}"
    );
    match &guarded {
        Ok((code, out, _)) => {
            ensure!(
                *code == 137 && out.is_empty(),
                "exec in the contained pod: {code} {out:?}"
            )
        }
        Err(e) => println!("   the runtime reports the killed exec as an error: {e:#}"),
    }
    ensure!(
        sys::pid_alive(contained.container_pid("app")?),
        "contain killed the pod"
    );

    let uncontain = v1::UncontainRequest {
        pod: by_name(&contained),
        reason: String::new(),
        ..Default::default()
    };
    let reply = w
        .agent
        .rpc(|mut c| async move { c.uncontain(uncontain).await })
        .map_err(|s| anyhow!("uncontain: {s}"))?;
    ensure!(
        reply.execs_killed >= 1,
        "the kernel counted {} kills",
        reply.execs_killed
    );
    let (code, out, _) = contained.exec("app", &argv, Duration::from_secs(10))?;
    ensure!(
        code == 0 && out == "ran\n",
        "exec after uncontain: {code} {out:?}"
    );
    ensure!(
        w.agent
            .log()
            .contains("killed a program started in a contained pod"),
        "the agent did not log the killed exec"
    );
    println!(
        "   guarded exec: {guarded:?}; execs killed: {}",
        reply.execs_killed
    );
    Ok(())
}

/// A pod cgroup made by hand, `/kubepods/besteffort/pod<uid>/<id>`, for an
/// agent started inside it. Removed on drop (after the agent, declared
/// later, has stopped).
struct FakePod {
    uid: String,
    top: PathBuf,
    container: PathBuf,
}

impl FakePod {
    fn new() -> Result<Self> {
        let uid = fs::read_to_string("/proc/sys/kernel/random/uuid")?
            .trim()
            .to_owned();
        let top = sys::cgroup2_mount()?.join(format!("kubepods/besteffort/pod{uid}"));
        let container = top.join(format!("{:0>64}", "5eed"));
        fs::create_dir_all(&container)?;
        Ok(Self {
            uid,
            top,
            container,
        })
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        let _ = fs::write(self.top.join("cgroup.kill"), "1");
        if let Err(e) = sys::remove_cgroup_tree(&self.top) {
            eprintln!("fake pod cleanup: {e:#}");
        }
    }
}

/// The code and message of a refused call.
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Result<(Code, String)> {
    match result {
        Ok(reply) => bail!("expected a refusal, got {reply:?}"),
        Err(status) => Ok((status.code(), status.message().to_owned())),
    }
}

fn expect(what: &str, got: (Code, String), code: Code, words: &str) -> Result<()> {
    ensure!(
        got.0 == code && got.1.contains(words),
        "{what}: expected {code:?} mentioning {words:?}, got {:?}: {}",
        got.0,
        got.1
    );
    println!("   {what}: {:?}: {}", got.0, got.1);
    Ok(())
}

fn error_codes(w: &World) -> Result<()> {
    invalid_arguments(w)?;
    not_found(w)?;
    refusals()?;
    deadlines(w)
}

fn invalid_arguments(w: &World) -> Result<()> {
    let a = &w.agent;
    let got = refused(kill(a, kill_req(None, "")))?;
    expect("kill without a pod", got, Code::InvalidArgument, "pod")?;
    let got = refused(kill(a, kill_req(by_uid("nope"), "")))?;
    expect(
        "kill of a malformed uid",
        got,
        Code::InvalidArgument,
        "pod.uid",
    )?;
    let uid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    let req = kill_req(by_uid(uid), "Bad_Name");
    let got = refused(a.rpc(|mut c| async move { c.kill(req).await }))?;
    expect(
        "kill of a malformed container",
        got,
        Code::InvalidArgument,
        "container",
    )?;
    let req = v1::KillRequest {
        timeout_ms: 600_000,
        ..kill_req(by_uid(uid), "")
    };
    let got = refused(a.rpc(|mut c| async move { c.kill(req).await }))?;
    expect(
        "kill with a too long wait",
        got,
        Code::InvalidArgument,
        "timeout_ms",
    )?;
    let req = v1::FreezeRequest {
        pod: by_uid(uid),
        ..Default::default()
    };
    let got = refused(a.rpc(|mut c| async move { c.freeze(req).await }))?;
    expect(
        "freeze without a reason",
        got,
        Code::InvalidArgument,
        "reason",
    )
}

fn not_found(w: &World) -> Result<()> {
    let a = &w.agent;
    let uid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    let got = refused(kill(a, kill_req(by_uid(uid), "")))?;
    expect("kill of a pod not on the node", got, Code::NotFound, uid)?;
    let pod = sleeper_pod(&w.cd, "errors")?;
    let req = kill_req(by_name(&pod), "nosuch");
    let got = refused(a.rpc(|mut c| async move { c.kill(req).await }))?;
    expect(
        "kill of a container the pod lacks",
        got,
        Code::NotFound,
        "nosuch",
    )?;
    let un = v1::UncontainRequest {
        pod: by_name(&pod),
        reason: String::new(),
        ..Default::default()
    };
    let got = refused(a.rpc(|mut c| async move { c.uncontain(un).await }))?;
    expect(
        "uncontain of a pod not contained",
        got,
        Code::NotFound,
        "not contained",
    )?;
    let contain = || v1::ContainRequest {
        pod: by_name(&pod),
        reason: "twice".into(),
        ..Default::default()
    };
    a.rpc(|mut c| async move { c.contain(contain()).await })
        .map_err(|s| anyhow!("contain: {s}"))?;
    let got = refused(a.rpc(|mut c| async move { c.contain(contain()).await }));
    let un = v1::UncontainRequest {
        pod: by_name(&pod),
        reason: String::new(),
        ..Default::default()
    };
    a.rpc(|mut c| async move { c.uncontain(un).await })
        .map_err(|s| anyhow!("uncontain: {s}"))?;
    expect(
        "contain twice",
        got?,
        Code::AlreadyExists,
        "already contained",
    )
}

/// An agent inside a pod refuses to act on that pod; an agent whose exec
/// guard did not load refuses contain.
fn refusals() -> Result<()> {
    let fake = FakePod::new()?;
    let pins = PathBuf::from(format!("/run/stk-contain-{}-not-bpffs", std::process::id()));
    let mut spec = AgentSpec::new("inside", "none");
    spec.cgroup = Some(fake.container.clone());
    spec.pin_dir = Some(pins.clone());
    let inside = Agent::start(&spec)?;
    let uid = fake.uid.clone();
    let got = refused(kill(&inside, kill_req(by_uid(&uid), "")));
    let uid = fake.uid.clone();
    let req = v1::FreezeRequest {
        pod: by_uid(&uid),
        reason: "x".into(),
        timeout_ms: 0,
        ..Default::default()
    };
    let frozen = refused(inside.rpc(|mut c| async move { c.freeze(req).await }));
    // Another pod, so that the only refusal left is the missing guard.
    let other = FakePod::new()?;
    let req = v1::ContainRequest {
        pod: by_uid(&other.uid),
        reason: "x".into(),
        ..Default::default()
    };
    let guarded = refused(inside.rpc(|mut c| async move { c.contain(req).await }));
    drop(inside);
    let _ = fs::remove_dir_all(&pins);
    expect(
        "kill of the agent's own pod",
        got?,
        Code::FailedPrecondition,
        "contains the agent",
    )?;
    expect(
        "freeze of the agent's own pod",
        frozen?,
        Code::FailedPrecondition,
        "agent",
    )?;
    expect(
        "contain without the guard",
        guarded?,
        Code::FailedPrecondition,
        "exec_guard",
    )
}

/// A freeze given 1 ms on a pod that forks without end: either the kernel
/// confirms it at once, or the reply is DEADLINE_EXCEEDED and the pod is
/// thawed again; never "frozen" without frozen 1.
fn deadlines(w: &World) -> Result<()> {
    let pod = bomb_pod(&w.cd, "late")?;
    let dir = pod.cgroup_dir()?;
    let mut late = None;
    for _ in 0..10 {
        let req = v1::FreezeRequest {
            pod: by_name(&pod),
            reason: "hurry".into(),
            timeout_ms: 1,
            ..Default::default()
        };
        match w.agent.rpc(|mut c| async move { c.freeze(req).await }) {
            Ok(reply) => ensure!(reply.events.is_some_and(|e| e.frozen), "{reply:?}"),
            Err(status) => {
                let freeze = fs::read_to_string(dir.join("cgroup.freeze"))?;
                ensure!(freeze.trim() == "0", "left with cgroup.freeze {freeze:?}");
                late = Some((status.code(), status.message().to_owned()));
                break;
            }
        }
        let thaw = v1::ThawRequest {
            pod: by_name(&pod),
            ..Default::default()
        };
        w.agent
            .rpc(|mut c| async move { c.thaw(thaw).await })
            .map_err(|s| anyhow!("thaw: {s}"))?;
    }
    let late = late.context("ten 1 ms freezes of a forking pod all settled: no deadline seen")?;
    expect(
        "freeze given 1 ms",
        late,
        Code::DeadlineExceeded,
        "written back",
    )
}

/// Links of the kernel whose program is the exec guard.
fn guard_links() -> Result<usize> {
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let out = sys::run_ok("bpftool", args)?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let progs = json(&["-j", "prog", "show"])?;
    let guards: Vec<u64> = progs
        .as_array()
        .context("bpftool prog show: not a list")?
        .iter()
        .filter(|p| p["name"] == "stk_guard_exec")
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let links = json(&["-j", "link", "show"])?;
    let links = links.as_array().context("bpftool link show: not a list")?;
    Ok(links
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| guards.contains(&id)))
        .count())
}

/// The guard's link and map are pinned: a contained pod stays contained
/// while its agent is dead, and the restarted agent adopts the link
/// instead of attaching a second one.
fn guard_restart(w: &World) -> Result<()> {
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/stk-contain-{}-restart",
        std::process::id()
    ));
    let result = guard_restart_with(w, &pins);
    let _ = fs::remove_dir_all(&pins);
    result
}

fn guard_restart_with(w: &World, pins: &Path) -> Result<()> {
    let links_before = guard_links()?;
    let mut spec = AgentSpec::new("restart", "none");
    spec.pin_dir = Some(pins.to_owned());
    let first = Agent::start(&spec)?;
    ensure!(
        guard_links()? == links_before + 1,
        "the guard did not attach once"
    );
    let pod = sleeper_pod(&w.cd, "restarted")?;
    let uid = pod.uid().to_owned();
    let req = v1::ContainRequest {
        pod: by_uid(&uid),
        reason: "restart test".into(),
        ..Default::default()
    };
    first
        .rpc(|mut c| async move { c.contain(req).await })
        .map_err(|s| anyhow!("contain: {s}"))?;
    first.crash();

    let argv = ["sh", "-c", "echo ran"];
    let (code, out, _) = pod.exec("app", &argv, Duration::from_secs(10))?;
    ensure!(
        code == 137 && out.is_empty(),
        "exec with the agent dead: {code} {out:?}"
    );

    let second = Agent::start(&spec)?;
    ensure!(
        guard_links()? == links_before + 1,
        "the restarted agent attached a second guard"
    );
    let req = v1::UncontainRequest {
        pod: by_uid(&uid),
        reason: String::new(),
        ..Default::default()
    };
    let reply = second
        .rpc(|mut c| async move { c.uncontain(req).await })
        .map_err(|s| anyhow!("uncontain after restart: {s}"))?;
    ensure!(reply.execs_killed >= 1, "killed {}", reply.execs_killed);
    let (code, out, _) = pod.exec("app", &argv, Duration::from_secs(10))?;
    ensure!(
        code == 0 && out == "ran\n",
        "exec after uncontain: {code} {out:?}"
    );
    drop(second);
    ensure!(
        guard_links()? == links_before,
        "the guard's link outlived its pins"
    );
    Ok(())
}

/// An API server on loopback that answers one request with a deleted pod,
/// and hands back the request line and body it got.
/// The mock API server's port, and the thread that returns the request
/// line and body it received.
/// Each request the fake API server got: its request line and body.
type Requests = Vec<(String, String)>;
type ApiServer = (u16, std::thread::JoinHandle<Result<Requests>>);

/// A fake API server on loopback: it answers the agent's pod index (an
/// empty list; watches end at once), Events (created) and the delete of a
/// pod, one connection per request, and returns what it got once it has
/// seen the delete and an Event about it, or after 20 s.
fn api_server() -> Result<ApiServer> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> Result<Requests> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got: Requests = Vec::new();
        let done = |got: &Requests| {
            let deleted = got.iter().any(|(l, _)| l.starts_with("DELETE "));
            let evented = got
                .iter()
                .any(|(l, b)| l.starts_with("POST ") && b.contains("StockadeTerminate"));
            deleted && evented
        };
        while !done(&got) && Instant::now() < deadline {
            match listener.accept() {
                Ok((conn, _)) => got.push(answer(conn)?),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(got)
    });
    Ok((port, server))
}

/// Reads one request from `conn` and answers it as an API server would.
fn answer(conn: std::net::TcpStream) -> Result<(String, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8(body)?;
    let line = request_line.trim().to_owned();
    let reply = if line.starts_with("DELETE ") {
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"doomed"}}"#.to_owned()
    } else if line.starts_with("GET ") && line.contains("watch=") {
        String::new()
    } else if line.starts_with("GET ") {
        r#"{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"1"},"items":[]}"#
            .to_owned()
    } else {
        body.clone()
    };
    let status = match line.starts_with("POST ") {
        true => "201 Created",
        false => "200 OK",
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    Ok((line, body))
}

fn terminate(w: &World) -> Result<()> {
    let req = |pod: &Pod<'_>| v1::TerminateRequest {
        pod: by_name(pod),
        reason: "containment test".into(),
        timeout_ms: 0,
        ..Default::default()
    };
    let pod = sleeper_pod(&w.cd, "orphaned")?;
    let request = req(&pod);
    let reply = w
        .agent
        .rpc(|mut c| async move { c.terminate(request).await })
        .map_err(|s| anyhow!("terminate without an API server: {s}"))?;
    check_killed(&reply.kill.clone().context("no kill")?, &pod)?;
    ensure!(
        reply.delete == v1::DeleteOutcome::NotConfigured as i32,
        "delete outcome {}: {}",
        reply.delete,
        reply.delete_detail
    );

    let (port, server) = api_server()?;
    let config =
        std::env::temp_dir().join(format!("stk-contain-{}-kubeconfig", std::process::id()));
    fs::write(&config, kubeconfig(port))?;
    let mut spec = AgentSpec::new("terminator", &w.cd.socket().display().to_string());
    spec.kubeconfig = Some(config.clone());
    let agent = Agent::start(&spec);
    let _ = fs::remove_file(&config);
    let agent = agent?;
    let pod = sleeper_pod(&w.cd, "doomed")?;
    let request = req(&pod);
    let reply = agent
        .rpc(|mut c| async move { c.terminate(request).await })
        .map_err(|s| anyhow!("terminate: {s}"))?;
    check_killed(&reply.kill.clone().context("no kill")?, &pod)?;
    let got = server
        .join()
        .map_err(|_| anyhow!("the API server panicked"))??;
    ensure!(
        reply.delete == v1::DeleteOutcome::Deleted as i32,
        "delete outcome {}: {}",
        reply.delete,
        reply.delete_detail
    );
    let (line, body) = got
        .iter()
        .find(|(l, _)| l.starts_with("DELETE "))
        .cloned()
        .with_context(|| format!("no DELETE reached the API server: {got:?}"))?;
    // The outcome is reported as an Event on the pod, after the delete.
    let (event_line, event) = got
        .iter()
        .find(|(l, b)| l.starts_with("POST ") && b.contains("StockadeTerminate"))
        .with_context(|| format!("no Event reached the API server: {got:?}"))?;
    ensure!(
        event_line.starts_with("POST /apis/events.k8s.io/v1/namespaces/contain/events"),
        "{event_line}"
    );
    let event: serde_json::Value = serde_json::from_str(event)?;
    ensure!(event["reason"] == "StockadeTerminated", "{event}");
    ensure!(event["regarding"]["name"] == "doomed", "{event}");
    ensure!(
        line.starts_with("DELETE /api/v1/namespaces/contain/pods/doomed"),
        "{line}"
    );
    let sent: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(sent["gracePeriodSeconds"] == 0, "{body}");
    ensure!(sent["preconditions"]["uid"] == pod.uid(), "{body}");
    println!("   the API server got {line} with {body}");
    Ok(())
}

fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: \
         http://127.0.0.1:{port}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    \
         user: nobody\ncurrent-context: mock\nusers:\n- name: nobody\n  user: {{}}\n"
    )
}

// ---------------------------------------------------------------------------
// Order ids, dry runs and per-pod turns

fn frozen_now(dir: &Path) -> Result<bool> {
    let events = fs::read_to_string(dir.join("cgroup.events"))?;
    Ok(events.lines().any(|l| l == "frozen 1"))
}

fn get_order(agent: &Agent, id: &str) -> Result<v1::Order, tonic::Status> {
    let req = v1::GetOrderRequest { id: id.to_owned() };
    agent.rpc(|mut c| async move { c.get_order(req).await })
}

/// Every containment order sent as a dry run answers with the pod and
/// `dry_run`, and leaves the kernel and the ledger as they were.
fn containment_dry_runs(w: &World) -> Result<()> {
    let pod = sleeper_pod(&w.cd, "dry")?;
    let pid = pod.container_pid("app")?;
    let dir = pod.cgroup_dir()?;
    let a = &w.agent;
    let id = |what: &str| format!("dry-{what}-{}", std::process::id());

    let req = v1::FreezeRequest {
        pod: by_name(&pod),
        reason: "dry".into(),
        dry_run: true,
        order_id: id("freeze"),
        ..Default::default()
    };
    let reply = a
        .rpc(|mut c| async move { c.freeze(req).await })
        .map_err(|s| anyhow!("dry freeze: {s}"))?;
    ensure!(reply.dry_run, "a dry freeze did not say dry_run");
    ensure!(reply.verified_at.is_none(), "a dry freeze says verified");
    ensure!(reply.pod.is_some_and(|p| p.uid == pod.uid()), "wrong pod");
    ensure!(!frozen_now(&dir)?, "a dry freeze froze the pod");

    let req = v1::KillRequest {
        dry_run: true,
        order_id: id("kill"),
        ..kill_req(by_name(&pod), "")
    };
    let reply = kill(a, req).map_err(|s| anyhow!("dry kill: {s}"))?;
    ensure!(reply.dry_run && reply.verified_at.is_none(), "{reply:?}");
    std::thread::sleep(Duration::from_millis(200));
    ensure!(sys::pid_alive(pid), "a dry kill killed the pod");

    let req = v1::TerminateRequest {
        pod: by_name(&pod),
        reason: "dry".into(),
        dry_run: true,
        order_id: id("terminate"),
        ..Default::default()
    };
    let reply = a
        .rpc(|mut c| async move { c.terminate(req).await })
        .map_err(|s| anyhow!("dry terminate: {s}"))?;
    ensure!(reply.dry_run, "{reply:?}");
    ensure!(sys::pid_alive(pid), "a dry terminate killed the pod");

    let req = v1::ContainRequest {
        pod: by_name(&pod),
        reason: "dry".into(),
        dry_run: true,
        order_id: id("contain"),
    };
    let reply = a
        .rpc(|mut c| async move { c.contain(req).await })
        .map_err(|s| anyhow!("dry contain: {s}"))?;
    ensure!(reply.dry_run, "{reply:?}");
    // Not contained: uncontain has nothing to lift.
    let req = v1::UncontainRequest {
        pod: by_name(&pod),
        ..Default::default()
    };
    let got = refused(a.rpc(|mut c| async move { c.uncontain(req).await }))?;
    expect(
        "uncontain after a dry contain",
        got,
        Code::NotFound,
        "not contained",
    )?;

    // A dry run of a pod that is not on the node is refused like an order.
    let req = v1::FreezeRequest {
        pod: by_uid("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"),
        reason: "dry".into(),
        dry_run: true,
        ..Default::default()
    };
    let got = refused(a.rpc(|mut c| async move { c.freeze(req).await }))?;
    expect(
        "dry freeze of a pod elsewhere",
        got,
        Code::NotFound,
        "not on node",
    )?;

    for what in ["freeze", "kill", "terminate", "contain"] {
        let got = refused(get_order(a, &id(what)))?;
        ensure!(
            got.0 == Code::NotFound,
            "the dry {what} is in the ledger: {got:?}"
        );
    }
    ensure!(sys::pid_alive(pid) && !frozen_now(&dir)?, "the pod changed");
    Ok(())
}

/// A freeze, a thaw and a kill sent twice with one id are acted on once
/// and answered the same; the same id with other content is refused; the
/// ledger follows the pod's state.
fn containment_once_per_id(w: &World) -> Result<()> {
    let pod = sleeper_pod(&w.cd, "once")?;
    let dir = pod.cgroup_dir()?;
    let a = &w.agent;
    let tag = std::process::id();
    let freeze_id = format!("once-freeze-{tag}");
    let freeze = |reason: &str| v1::FreezeRequest {
        pod: by_name(&pod),
        reason: reason.into(),
        timeout_ms: 5000,
        order_id: freeze_id.clone(),
        ..Default::default()
    };

    let req = freeze("incident 7");
    let first = a
        .rpc(|mut c| async move { c.freeze(req).await })
        .map_err(|s| anyhow!("freeze: {s}"))?;
    ensure!(first.order_id == freeze_id, "reply id {:?}", first.order_id);
    ensure!(frozen_now(&dir)?, "not frozen");
    let order = get_order(a, &freeze_id).map_err(|s| anyhow!("get order: {s}"))?;
    ensure!(order.action == "freeze", "{order:?}");
    ensure!(order.state == v1::OrderState::Enforced as i32, "{order:?}");
    ensure!(order.pod_uid == pod.uid(), "{order:?}");

    // Thawed behind the agent's back: a replay must not freeze it again.
    fs::write(dir.join("cgroup.freeze"), "0")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while frozen_now(&dir)? {
        ensure!(Instant::now() < deadline, "the manual thaw did not settle");
        std::thread::sleep(Duration::from_millis(10));
    }
    let req = freeze("incident 7");
    let again = a
        .rpc(|mut c| async move { c.freeze(req).await })
        .map_err(|s| anyhow!("repeated freeze: {s}"))?;
    ensure!(again == first, "a repeated id got another answer");
    ensure!(!frozen_now(&dir)?, "a repeated id froze the pod again");

    let req = freeze("another reason");
    let got = refused(a.rpc(|mut c| async move { c.freeze(req).await }))?;
    expect(
        "same id, other content",
        got,
        Code::AlreadyExists,
        &freeze_id,
    )?;

    // Freeze again under a new id, then thaw: the freeze orders end.
    let req = v1::FreezeRequest {
        order_id: format!("once-freeze2-{tag}"),
        ..freeze("incident 7")
    };
    a.rpc(|mut c| async move { c.freeze(req).await })
        .map_err(|s| anyhow!("second freeze: {s}"))?;
    let thaw = v1::ThawRequest {
        pod: by_name(&pod),
        order_id: format!("once-thaw-{tag}"),
        ..Default::default()
    };
    a.rpc(|mut c| async move { c.thaw(thaw).await })
        .map_err(|s| anyhow!("thaw: {s}"))?;
    for id in [freeze_id.clone(), format!("once-freeze2-{tag}")] {
        let order = get_order(a, &id).map_err(|s| anyhow!("get order: {s}"))?;
        ensure!(
            order.state == v1::OrderState::Released as i32,
            "freeze {id} still {:?} after the thaw",
            order.state
        );
    }

    let kill_id = format!("once-kill-{tag}");
    let req = v1::KillRequest {
        order_id: kill_id.clone(),
        ..kill_req(by_name(&pod), "")
    };
    let killed = kill(a, req.clone()).map_err(|s| anyhow!("kill: {s}"))?;
    check_killed(&killed, &pod)?;
    ensure!(killed.order_id == kill_id, "{:?}", killed.order_id);
    // The pod is gone: a new kill would be NOT_FOUND; the replay is not.
    let replay = kill(a, req).map_err(|s| anyhow!("repeated kill: {s}"))?;
    ensure!(replay == killed, "the repeated kill got another answer");
    let order = get_order(a, &kill_id).map_err(|s| anyhow!("get order: {s}"))?;
    ensure!(order.action == "kill", "{order:?}");
    println!("   freeze, thaw and kill acted on once per id; the replayed kill answered the same");
    Ok(())
}

/// Freezes and thaws of one pod sent together: each is carried out in its
/// turn, each reply is what the kernel said for it, and the pod ends in
/// the state of the order answered last.
fn freeze_thaw_turns(w: &World) -> Result<()> {
    let pod = sleeper_pod(&w.cd, "turns")?;
    let dir = pod.cgroup_dir()?;
    let socket = w.agent.socket();
    const ROUNDS: usize = 8;
    for round in 1..=ROUNDS {
        let mut threads = Vec::new();
        for freeze in [true, false, true, false] {
            let (socket, target) = (socket.clone(), by_name(&pod));
            threads.push(std::thread::spawn(move || {
                one_freeze_or_thaw(&socket, target, freeze)
            }));
        }
        let mut answers = Vec::new();
        for t in threads {
            let answer = t.join().map_err(|_| anyhow!("a thread panicked"))?;
            answers.push(answer.with_context(|| format!("round {round}"))?);
        }
        for (freeze, events, _) in &answers {
            ensure!(
                events.frozen == *freeze,
                "round {round}: a {} answered frozen {}",
                if *freeze { "freeze" } else { "thaw" },
                events.frozen
            );
        }
        let last = answers.iter().max_by_key(|a| a.2).context("no answer")?;
        ensure!(
            frozen_now(&dir)? == last.0,
            "round {round}: the pod is not in the state of the last answer"
        );
    }
    println!("   {ROUNDS} rounds of 2 freezes + 2 thaws at once: every answer matched the kernel");
    Ok(())
}

/// One freeze or thaw on its own connection: (freeze?, events, verified).
fn one_freeze_or_thaw(
    socket: &Path,
    pod: Option<PodSelector>,
    freeze: bool,
) -> Result<(bool, v1::CgroupEvents, SystemTime)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = super::agent::connect(socket).await?;
        let (events, verified) = if freeze {
            let req = v1::FreezeRequest {
                pod,
                reason: "turns".into(),
                timeout_ms: 5000,
                ..Default::default()
            };
            let r = client.freeze(req).await?.into_inner();
            (r.events, r.verified_at)
        } else {
            let req = v1::ThawRequest {
                pod,
                timeout_ms: 5000,
                ..Default::default()
            };
            let r = client.thaw(req).await?.into_inner();
            (r.events, r.verified_at)
        };
        let verified = SystemTime::try_from(verified.context("no verified_at")?)?;
        Ok((freeze, events.context("no events")?, verified))
    })
}

fn or_reason(f: &v1::KernelFeature) -> &str {
    match f.available {
        true => "available",
        false => &f.detail,
    }
}

//! `freeze`, `thaw`, `kill`, `terminate`, `contain` and `uncontain`: their
//! flags, their requests, and how their replies are shown.

use std::time::Duration;

use clap::Args;
use prost_types::Timestamp;
use serde_json::{json, Value};
use stockade_proto::v1::{
    stockade_client::StockadeClient, CgroupEvents, ContainRequest, DeleteOutcome, FreezeRequest,
    KillMethod, KillRequest, KillResponse, Pod, RuntimeOutcome, RuntimeStop, TerminateRequest,
    ThawRequest, UncontainRequest,
};
use tonic::transport::Channel;

use super::{
    args::{parse_reason, parse_timeout, Output, PodArg},
    json,
    render::millis_between,
    table::Table,
    Error, Report,
};

type Client = StockadeClient<Channel>;

/// What every containment order carries besides its pod.
#[derive(Debug, Args)]
pub struct MetaArgs {
    /// Resolve, validate and check the guards; change nothing.
    #[arg(long, env = "STOCKADE_DRY_RUN")]
    pub dry_run: bool,

    /// This order's id, so that a retry is acted on once; the agent makes
    /// one up when it is not given.
    #[arg(
        long,
        env = "STOCKADE_ORDER_ID",
        default_value = "",
        hide_default_value = true
    )]
    pub order_id: String,
}

/// An order that needs a reason: freeze, terminate, contain.
#[derive(Debug, Args)]
pub struct OrderArgs {
    #[command(flatten)]
    pub pod: PodArg,

    /// Why, in a few words; recorded with the order.
    #[arg(long, env = "STOCKADE_REASON", value_parser = parse_reason)]
    pub reason: String,

    /// How long the agent waits for the kernel to confirm, as 5s or 500ms
    /// (the agent's default is 5s); keep it under --timeout.
    #[arg(long, env = "STOCKADE_WAIT", value_parser = parse_timeout)]
    pub wait: Option<Duration>,

    #[command(flatten)]
    pub meta: MetaArgs,
}

/// An order that undoes another: thaw, uncontain.
#[derive(Debug, Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub pod: PodArg,

    /// Why, in a few words; recorded with the order.
    #[arg(
        long,
        env = "STOCKADE_REASON",
        default_value = "",
        hide_default_value = true
    )]
    pub reason: String,

    /// How long the agent waits for the kernel to confirm (default 5s).
    #[arg(long, env = "STOCKADE_WAIT", value_parser = parse_timeout)]
    pub wait: Option<Duration>,

    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub order: OrderArgs,

    /// Kill only this container of the pod: its name, or its 64-hex id.
    #[arg(long, env = "STOCKADE_CONTAINER", value_name = "NAME|ID")]
    pub container: Option<String>,
}

fn wait_ms(wait: Option<Duration>) -> u32 {
    wait.map_or(0, |w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX))
}

pub async fn freeze(
    client: &mut Client,
    args: &OrderArgs,
    output: Output,
) -> Result<Report, Error> {
    let request = FreezeRequest {
        pod: Some(args.pod.selector()),
        reason: args.reason.clone(),
        timeout_ms: wait_ms(args.wait),
        dry_run: args.meta.dry_run,
        order_id: args.meta.order_id.clone(),
    };
    let reply = client.freeze(request).await?.into_inner();
    if reply.dry_run {
        return Ok(dry_run_report("freeze", reply.pod.as_ref(), output));
    }
    let (received, verified) = (reply.received_at, reply.verified_at);
    Ok(Report::plain(settled(
        "froze",
        reply.pod.as_ref(),
        reply.events.as_ref(),
        (received.as_ref(), verified.as_ref()),
        &reply.order_id,
        output,
    )))
}

pub async fn thaw(client: &mut Client, args: &UndoArgs, output: Output) -> Result<Report, Error> {
    let request = ThawRequest {
        pod: Some(args.pod.selector()),
        reason: args.reason.clone(),
        timeout_ms: wait_ms(args.wait),
        dry_run: args.meta.dry_run,
        order_id: args.meta.order_id.clone(),
    };
    let reply = client.thaw(request).await?.into_inner();
    if reply.dry_run {
        return Ok(dry_run_report("thaw", reply.pod.as_ref(), output));
    }
    let (received, verified) = (reply.received_at, reply.verified_at);
    Ok(Report::plain(settled(
        "thawed",
        reply.pod.as_ref(),
        reply.events.as_ref(),
        (received.as_ref(), verified.as_ref()),
        &reply.order_id,
        output,
    )))
}

pub async fn kill(client: &mut Client, args: &KillArgs, output: Output) -> Result<Report, Error> {
    let request = KillRequest {
        pod: Some(args.order.pod.selector()),
        container: args.container.clone().unwrap_or_default(),
        reason: args.order.reason.clone(),
        timeout_ms: wait_ms(args.order.wait),
        dry_run: args.order.meta.dry_run,
        order_id: args.order.meta.order_id.clone(),
    };
    let reply = client.kill(request).await?.into_inner();
    if reply.dry_run {
        return Ok(dry_run_report("kill", reply.pod.as_ref(), output));
    }
    let text = match output {
        Output::Table => killed_report(&reply),
        Output::Json => json::text(&kill_json(&reply)),
    };
    Ok(Report::plain(text))
}

pub async fn terminate(
    client: &mut Client,
    args: &OrderArgs,
    output: Output,
) -> Result<Report, Error> {
    let request = TerminateRequest {
        pod: Some(args.pod.selector()),
        reason: args.reason.clone(),
        timeout_ms: wait_ms(args.wait),
        dry_run: args.meta.dry_run,
        order_id: args.meta.order_id.clone(),
    };
    let reply = client.terminate(request).await?.into_inner();
    if reply.dry_run {
        let pod = reply.kill.as_ref().and_then(|k| k.pod.as_ref());
        return Ok(dry_run_report("terminate", pod, output));
    }
    let kill = reply.kill.clone().unwrap_or_default();
    let outcome = delete_name(reply.delete);
    let text = match output {
        Output::Table => {
            let mut text = killed_report(&kill);
            let detail = match reply.delete_detail.as_str() {
                "" => String::new(),
                why => format!(": {why}"),
            };
            text.push_str(&format!("API delete: {outcome}{detail}\n"));
            text
        }
        Output::Json => json::text(&json!({
            "order_id": reply.order_id,
            "kill": kill_json(&kill),
            "delete": outcome,
            "delete_detail": reply.delete_detail,
            "deleted_at": stamp(reply.deleted_at.as_ref()),
        })),
    };
    // The kill happened; a delete that did not is still worth exit code 1.
    let problem = reply.delete != DeleteOutcome::Deleted as i32
        && reply.delete != DeleteOutcome::AlreadyGone as i32;
    Ok(Report { text, problem })
}

pub async fn contain(
    client: &mut Client,
    args: &OrderArgs,
    output: Output,
) -> Result<Report, Error> {
    let request = ContainRequest {
        pod: Some(args.pod.selector()),
        reason: args.reason.clone(),
        dry_run: args.meta.dry_run,
        order_id: args.meta.order_id.clone(),
    };
    let reply = client.contain(request).await?.into_inner();
    if reply.dry_run {
        return Ok(dry_run_report("contain", reply.pod.as_ref(), output));
    }
    let label = pod_label(reply.pod.as_ref());
    let text = match output {
        Output::Table => format!(
            "contained {label}: any program it starts is killed at exec ({})\nverified  {}\norder     {}\n",
            reply.hook,
            stamp_text(reply.verified_at.as_ref()),
            reply.order_id,
        ),
        Output::Json => json::text(&json!({
            "order_id": reply.order_id,
            "pod": reply.pod.as_ref().map(json::pod),
            "hook": reply.hook,
            "received_at": stamp(reply.received_at.as_ref()),
            "verified_at": stamp(reply.verified_at.as_ref()),
        })),
    };
    Ok(Report::plain(text))
}

pub async fn uncontain(
    client: &mut Client,
    args: &UndoArgs,
    output: Output,
) -> Result<Report, Error> {
    let request = UncontainRequest {
        pod: Some(args.pod.selector()),
        reason: args.reason.clone(),
        dry_run: args.meta.dry_run,
        order_id: args.meta.order_id.clone(),
    };
    let reply = client.uncontain(request).await?.into_inner();
    if reply.dry_run {
        return Ok(dry_run_report("uncontain", reply.pod.as_ref(), output));
    }
    let label = pod_label(reply.pod.as_ref());
    let text = match output {
        Output::Table => format!(
            "uncontained {label}: {} program(s) were killed at exec while contained\norder     {}\n",
            reply.execs_killed,
            reply.order_id,
        ),
        Output::Json => json::text(&json!({
            "order_id": reply.order_id,
            "pod": reply.pod.as_ref().map(json::pod),
            "execs_killed": reply.execs_killed,
            "received_at": stamp(reply.received_at.as_ref()),
            "verified_at": stamp(reply.verified_at.as_ref()),
        })),
    };
    Ok(Report::plain(text))
}

/// A dry run's answer: what the agent would do, said so that it is never
/// read as done.
fn dry_run_report(verb: &str, pod: Option<&Pod>, output: Output) -> Report {
    let text = match output {
        Output::Table => format!(
            "DRY RUN: nothing was changed; the agent would {verb} {} (uid {})\n",
            pod_label(pod),
            pod.map(|p| p.uid.as_str()).unwrap_or("-"),
        ),
        Output::Json => json::text(&json!({
            "dry_run": true,
            "action": verb,
            "pod": pod.map(json::pod),
        })),
    };
    Report::plain(text)
}

/// A freeze or thaw: what `cgroup.events` said, and when.
fn settled(
    verb: &str,
    pod: Option<&Pod>,
    events: Option<&CgroupEvents>,
    (received, verified): (Option<&Timestamp>, Option<&Timestamp>),
    order_id: &str,
    output: Output,
) -> String {
    let events = events.copied().unwrap_or_default();
    if output == Output::Json {
        return json::text(&json!({
            "order_id": order_id,
            "pod": pod.map(json::pod),
            "events": events_json(&events),
            "received_at": stamp(received),
            "verified_at": stamp(verified),
        }));
    }
    let mut text = format!(
        "{verb} {} (uid {}): cgroup.events says {}\n",
        pod_label(pod),
        pod.map(|p| p.uid.as_str()).unwrap_or("-"),
        events_text(&events)
    );
    text.push_str(
        &Table::pairs([
            ("order", order_id.to_owned()),
            ("received", stamp_text(received)),
            ("verified", stamp_text(verified)),
            ("order to verified", millis_between(received, verified)),
        ])
        .render(),
    );
    text
}

fn killed_report(reply: &KillResponse) -> String {
    let events = reply.events.unwrap_or_default();
    let mut text = format!(
        "killed {} (uid {}) with {}: cgroup.events says {}\n",
        pod_label(reply.pod.as_ref()),
        reply.pod.as_ref().map(|p| p.uid.as_str()).unwrap_or("-"),
        method_name(reply.method),
        events_text(&events)
    );
    let (received, verified) = (reply.received_at.as_ref(), reply.verified_at.as_ref());
    let mut pairs = vec![
        ("order", reply.order_id.clone()),
        (
            "cgroup",
            format!("{} (id {})", reply.cgroup_path, reply.cgroup_id),
        ),
        ("received", stamp_text(received)),
        ("verified", stamp_text(verified)),
        ("order to verified", millis_between(received, verified)),
    ];
    if reply.method == KillMethod::FreezeSignal as i32 {
        pairs.push(("processes signalled", reply.signalled.to_string()));
    }
    text.push_str(&Table::pairs(pairs).render());
    text.push_str(&runtime_table(&reply.runtime));
    text
}

fn runtime_table(stops: &[RuntimeStop]) -> String {
    if stops.is_empty() {
        return "runtime: not told (no runtime socket configured)\n".into();
    }
    let mut table = Table::new(&["CONTAINER", "NAME", "RUNTIME ANSWER", "AFTER"]);
    for stop in stops {
        table.row(vec![
            short_id(&stop.container_id),
            or_dash(&stop.container_name),
            stop.detail.clone(),
            format!("{} ms", stop.elapsed_ms),
        ]);
    }
    format!("\n{}", table.render())
}

fn kill_json(reply: &KillResponse) -> Value {
    json!({
        "order_id": reply.order_id,
        "pod": reply.pod.as_ref().map(json::pod),
        "cgroup_path": reply.cgroup_path,
        "cgroup_id": reply.cgroup_id,
        "method": method_name(reply.method),
        "signalled": reply.signalled,
        "events": events_json(&reply.events.unwrap_or_default()),
        "received_at": stamp(reply.received_at.as_ref()),
        "verified_at": stamp(reply.verified_at.as_ref()),
        "runtime": reply.runtime.iter().map(|s| json!({
            "container_id": s.container_id,
            "container_name": s.container_name,
            "outcome": RuntimeOutcome::try_from(s.outcome)
                .map_or("UNKNOWN", |o| o.as_str_name()),
            "detail": s.detail,
            "elapsed_ms": s.elapsed_ms,
        })).collect::<Vec<_>>(),
    })
}

fn events_json(e: &CgroupEvents) -> Value {
    json!({ "populated": e.populated, "frozen": e.frozen, "present": e.present })
}

/// `frozen 1 (populated 1)`, or that the cgroup is gone.
fn events_text(e: &CgroupEvents) -> String {
    if !e.present {
        return "nothing: the cgroup is gone, so it is empty".into();
    }
    format!(
        "populated {}, frozen {}",
        u8::from(e.populated),
        u8::from(e.frozen)
    )
}

fn method_name(method: i32) -> &'static str {
    match KillMethod::try_from(method) {
        Ok(KillMethod::CgroupKill) => "cgroup.kill",
        Ok(KillMethod::FreezeSignal) => "freeze + SIGKILL + thaw",
        _ => "an unknown method",
    }
}

fn delete_name(outcome: i32) -> &'static str {
    match DeleteOutcome::try_from(outcome) {
        Ok(DeleteOutcome::Deleted) => "deleted (grace period 0)",
        Ok(DeleteOutcome::AlreadyGone) => "the pod was already gone",
        Ok(DeleteOutcome::NotConfigured) => "NOT DONE, no API server configured",
        Ok(DeleteOutcome::Failed) => "FAILED",
        _ => "unknown",
    }
}

fn pod_label(pod: Option<&Pod>) -> String {
    match pod {
        Some(pod) if !pod.name.is_empty() => format!("{}/{}", pod.namespace, pod.name),
        Some(pod) => pod.uid.clone(),
        None => "-".into(),
    }
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

fn stamp(at: Option<&Timestamp>) -> Value {
    at.map_or(Value::Null, |t| Value::String(t.to_string()))
}

fn stamp_text(at: Option<&Timestamp>) -> String {
    at.map_or_else(|| "-".into(), Timestamp::to_string)
}

#[cfg(test)]
mod tests {
    use stockade_proto::v1::RuntimeOutcome;

    use super::*;

    fn at(nanos: i32) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: 1_800_000_000,
            nanos,
        })
    }

    fn kill_reply() -> KillResponse {
        KillResponse {
            pod: Some(Pod {
                uid: "0b1e".into(),
                namespace: "shop".into(),
                name: "web".into(),
                ..Pod::default()
            }),
            cgroup_path: "/kubepods/besteffort/pod0b1e".into(),
            cgroup_id: 7,
            method: KillMethod::CgroupKill as i32,
            events: Some(CgroupEvents {
                populated: false,
                frozen: false,
                present: true,
            }),
            received_at: at(0),
            verified_at: at(4_200_000),
            runtime: vec![RuntimeStop {
                container_id: "c".repeat(64),
                container_name: "app".into(),
                outcome: RuntimeOutcome::NoAnswer as i32,
                detail: "did not answer within 2s".into(),
                elapsed_ms: 2001,
            }],
            ..KillResponse::default()
        }
    }

    #[test]
    fn a_kill_report_says_how_what_the_kernel_said_and_what_the_runtime_answered() {
        let text = killed_report(&kill_reply());

        assert!(text.starts_with(
            "killed shop/web (uid 0b1e) with cgroup.kill: cgroup.events says populated 0, \
             frozen 0\n"
        ));
        assert!(text.contains("order to verified  4.2 ms\n"), "{text}");
        assert!(
            text.contains("cccccccccccc  app   did not answer within 2s  2001 ms"),
            "{text}"
        );
    }

    #[test]
    fn a_kill_without_a_runtime_says_the_runtime_was_not_told() {
        let reply = KillResponse {
            runtime: Vec::new(),
            ..kill_reply()
        };
        assert!(
            killed_report(&reply).ends_with("runtime: not told (no runtime socket configured)\n")
        );
    }

    #[test]
    fn kill_json_names_enums_as_the_proto_does() {
        let value = kill_json(&kill_reply());
        assert_eq!(value["runtime"][0]["outcome"], "RUNTIME_OUTCOME_NO_ANSWER");
        assert_eq!(value["method"], "cgroup.kill");
        assert_eq!(value["events"]["populated"], false);
    }

    #[test]
    fn a_gone_cgroup_reads_as_empty() {
        assert!(events_text(&CgroupEvents::default()).contains("gone"));
    }
}

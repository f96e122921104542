//! Replies rendered for people: tables and short reports.

use prost_types::Timestamp;
use stockade_proto::v1::{
    AgentInfo, Isolation, IsolationMode, KernelFeature, Pod, QosClass, ReleaseResponse,
};

use super::{allow::format_allow_rule, table::Table};

/// `status`: the agent and what it holds.
pub fn status(info: &AgentInfo, pods: &[Pod], isolations: &[Isolation]) -> String {
    let available = info.features.iter().filter(|f| f.available).count();
    let strict = isolations
        .iter()
        .filter(|i| i.mode == i32::from(IsolationMode::Strict))
        .count();
    Table::pairs([
        (
            "agent",
            format!("{} on node {}", info.version, info.node_name),
        ),
        ("kernel", info.kernel_release.clone()),
        ("cgroup2", info.cgroup2_mount.clone()),
        ("bpffs", info.bpffs_dir.clone()),
        ("metadata", info.pod_metadata_source.clone()),
        ("started", timestamp(info.started_at.as_ref())),
        (
            "features",
            format!("{available} of {} available", info.features.len()),
        ),
        ("pods", pods.len().to_string()),
        (
            "isolations",
            format!(
                "{} ({strict} strict, {} node-probes)",
                isolations.len(),
                isolations.len() - strict
            ),
        ),
    ])
    .render()
}

/// `doctor`: one line per feature, then a verdict; true if an order
/// lacks a feature it needs.
pub fn doctor(features: &[KernelFeature]) -> (String, bool) {
    let mut table = Table::new(&["FEATURE", "STATUS", "NEEDED-BY", "DETAIL"]);
    for feature in features {
        let state = if feature.available { "OK" } else { "MISSING" };
        table.row(vec![
            feature.name.clone(),
            state.to_string(),
            or_dash(&feature.needed_by.join(",")),
            feature.detail.clone(),
        ]);
    }

    let missing: Vec<&KernelFeature> = features
        .iter()
        .filter(|f| !f.available && !f.needed_by.is_empty())
        .collect();
    let mut text = table.render();
    text.push('\n');
    text.push_str(&verdict(&missing));
    (text, !missing.is_empty())
}

fn verdict(missing: &[&KernelFeature]) -> String {
    if missing.is_empty() {
        return "every feature an order needs is available\n".to_string();
    }
    let mut orders: Vec<&str> = missing
        .iter()
        .flat_map(|f| f.needed_by.iter().map(String::as_str))
        .collect();
    orders.sort_unstable();
    orders.dedup();
    format!(
        "{} needed feature(s) missing: these orders will fail with FAILED_PRECONDITION: {}\n",
        missing.len(),
        orders.join(", ")
    )
}

/// `pods`: the ISOLATED column names the mode of the pod's isolation.
pub fn pods(pods: &[Pod], isolations: &[Isolation]) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "UID",
        "QOS",
        "CONTAINERS",
        "ISOLATED",
        "CGROUP",
    ];
    let mut table = Table::new(&header);
    for pod in pods {
        table.row(vec![
            or_dash(&pod.namespace),
            or_dash(&pod.name),
            pod.uid.clone(),
            qos(pod.qos_class).to_string(),
            pod.containers.len().to_string(),
            isolated(pod, isolations),
            pod.cgroup_path.clone(),
        ]);
    }
    table.render()
}

fn isolated(pod: &Pod, isolations: &[Isolation]) -> String {
    let found = isolations
        .iter()
        .find(|i| i.pod.as_ref().is_some_and(|p| p.uid == pod.uid));
    match (found, pod.isolated) {
        (Some(isolation), _) => mode(isolation.mode).to_string(),
        // Isolated between the two requests that built this table.
        (None, true) => "yes".to_string(),
        (None, false) => "no".to_string(),
    }
}

/// `isolations`: one line per isolation, with the kernel's counters.
pub fn isolations(isolations: &[Isolation]) -> String {
    let header = [
        "POD",
        "MODE",
        "ALLOW",
        "ENFORCED-AT",
        "VERIFIED-AT",
        "DROPPED(in/out)",
        "REFUSED(connect/send)",
    ];
    let mut table = Table::new(&header);
    for isolation in isolations {
        table.row(isolation_row(isolation));
    }
    table.render()
}

fn isolation_row(isolation: &Isolation) -> Vec<String> {
    let counters = isolation.counters.unwrap_or_default();
    vec![
        pod_label(isolation.pod.as_ref()),
        mode(isolation.mode).to_string(),
        allow_list(isolation),
        timestamp(isolation.enforced_at.as_ref()),
        timestamp(isolation.verified_at.as_ref()),
        format!("{}/{}", counters.ingress_dropped, counters.egress_dropped),
        format!("{}/{}", counters.connects_refused, counters.sends_refused),
    ]
}

/// `isolate`: what the agent verified, and how long the order took.
pub fn isolated_report(isolation: &Isolation) -> String {
    let pod = isolation.pod.clone().unwrap_or_default();
    let took = millis_between(
        isolation.received_at.as_ref(),
        isolation.enforced_at.as_ref(),
    );
    let mut text = format!(
        "isolated {} (uid {}) in {} mode\n",
        pod_label(Some(&pod)),
        pod.uid,
        mode(isolation.mode)
    );
    text.push_str(
        &Table::pairs([
            ("reason", isolation.reason.clone()),
            ("reference", or_dash(&isolation.reference)),
            ("allow", allow_list(isolation)),
            (
                "cgroup",
                format!("{} (id {})", pod.cgroup_path, pod.cgroup_id),
            ),
            ("received", timestamp(isolation.received_at.as_ref())),
            ("enforced", timestamp(isolation.enforced_at.as_ref())),
            ("verified", timestamp(isolation.verified_at.as_ref())),
            ("order to enforced", took),
        ])
        .render(),
    );
    text.push('\n');
    text.push_str(&attachments(isolation));
    text
}

fn attachments(isolation: &Isolation) -> String {
    let mut table = Table::new(&["HOOK", "PROGRAM", "PIN"]);
    for attachment in &isolation.attachments {
        table.row(vec![
            attachment.hook.clone(),
            attachment.program_id.to_string(),
            attachment.pin.clone(),
        ]);
    }
    table.render()
}

/// `release`: what the agent verified once its programs were gone.
pub fn released_report(reply: &ReleaseResponse) -> String {
    if reply.pod.is_none() {
        return released_all_report(reply);
    }
    let pod = reply.pod.clone().unwrap_or_default();
    let took = millis_between(reply.received_at.as_ref(), reply.verified_at.as_ref());
    let mut text = format!("released {} (uid {})\n", pod_label(Some(&pod)), pod.uid);
    text.push_str(
        &Table::pairs([
            (
                "cgroup",
                format!("{} (id {})", pod.cgroup_path, pod.cgroup_id),
            ),
            ("received", timestamp(reply.received_at.as_ref())),
            ("verified", timestamp(reply.verified_at.as_ref())),
            ("order to verified", took),
            (
                "other tools' programs left",
                reply.foreign_programs_left.to_string(),
            ),
        ])
        .render(),
    );
    text
}

/// `release --all`: every pod released (or, for a dry run, that would be).
fn released_all_report(reply: &ReleaseResponse) -> String {
    if reply.released.is_empty() {
        return "no isolation on this node: nothing to release\n".into();
    }
    let mut table = Table::new(&["POD", "UID", "CGROUP"]);
    for pod in &reply.released {
        table.row(vec![
            pod_label(Some(pod)),
            pod.uid.clone(),
            pod.cgroup_path.clone(),
        ]);
    }
    format!(
        "released {} pod(s); other tools' programs left: {}\n{}",
        reply.released.len(),
        reply.foreign_programs_left,
        table.render()
    )
}

/// "node-probes" or "strict", the words used wherever a mode is shown.
pub fn mode(mode: i32) -> &'static str {
    match IsolationMode::try_from(mode) {
        Ok(IsolationMode::Strict) => "strict",
        Ok(IsolationMode::AllowNodeProbes | IsolationMode::Unspecified) => "node-probes",
        Err(_) => "unknown",
    }
}

fn qos(class: i32) -> &'static str {
    match QosClass::try_from(class) {
        Ok(QosClass::Guaranteed) => "Guaranteed",
        Ok(QosClass::Burstable) => "Burstable",
        Ok(QosClass::BestEffort) => "BestEffort",
        _ => "-",
    }
}

/// `namespace/name`, or the UID when no runtime named the pod.
fn pod_label(pod: Option<&Pod>) -> String {
    match pod {
        Some(pod) if !pod.name.is_empty() => format!("{}/{}", pod.namespace, pod.name),
        Some(pod) => pod.uid.clone(),
        None => "-".to_string(),
    }
}

fn allow_list(isolation: &Isolation) -> String {
    let rules: Vec<String> = isolation.allow.iter().map(format_allow_rule).collect();
    or_dash(&rules.join(","))
}

fn timestamp(at: Option<&Timestamp>) -> String {
    at.map_or_else(|| "-".to_string(), Timestamp::to_string)
}

/// `to - from` in milliseconds, as `3.2 ms`, or `-` when either is unknown.
pub fn millis_between(from: Option<&Timestamp>, to: Option<&Timestamp>) -> String {
    let (Some(from), Some(to)) = (from, to) else {
        return "-".to_string();
    };
    let seconds = (to.seconds - from.seconds) as f64;
    let nanos = f64::from(to.nanos - from.nanos);
    format!("{:.1} ms", seconds * 1e3 + nanos / 1e6)
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use stockade_proto::v1::{AllowRule, Counters, Protocol};

    use super::*;

    fn at(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn web_pod() -> Pod {
        Pod {
            uid: "0b1e".into(),
            namespace: "shop".into(),
            name: "web".into(),
            qos_class: QosClass::Burstable.into(),
            cgroup_path: "/kubepods/burstable/pod0b1e".into(),
            isolated: true,
            ..Pod::default()
        }
    }

    fn strict_isolation() -> Isolation {
        Isolation {
            pod: Some(web_pod()),
            mode: IsolationMode::Strict.into(),
            allow: vec![AllowRule {
                cidr: "10.96.0.10".into(),
                protocol: Protocol::Udp.into(),
                port: 53,
                port_end: 0,
            }],
            received_at: at(1_800_000_000, 0),
            enforced_at: at(1_800_000_000, 3_250_000),
            verified_at: at(1_800_000_000, 4_000_000),
            counters: Some(Counters {
                ingress_dropped: 7,
                egress_dropped: 8,
                connects_refused: 2,
                sends_refused: 1,
            }),
            ..Isolation::default()
        }
    }

    #[test]
    fn isolations_table_shows_mode_allow_list_and_counters() {
        let text = isolations(&[strict_isolation()]);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("POD       MODE    ALLOW              ENFORCED-AT"));
        assert_eq!(
            lines[1],
            "shop/web  strict  10.96.0.10:udp:53  2027-01-15T08:00:00.003250Z  \
             2027-01-15T08:00:00.004Z  7/8              2/1"
        );
    }

    #[test]
    fn pods_table_names_the_isolation_mode() {
        let other = Pod {
            uid: "77aa".into(),
            ..Pod::default()
        };

        let text = pods(&[web_pod(), other], &[strict_isolation()]);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAMESPACE  NAME  UID   QOS        CONTAINERS  ISOLATED  CGROUP"
        );
        assert_eq!(
            lines[1],
            "shop       web   0b1e  Burstable  0           strict    /kubepods/burstable/pod0b1e"
        );
        assert_eq!(lines[2], "-          -     77aa  -          0           no");
    }

    #[test]
    fn isolate_report_gives_the_order_to_enforced_time() {
        let text = isolated_report(&strict_isolation());

        assert!(
            text.starts_with("isolated shop/web (uid 0b1e) in strict mode\n"),
            "{text}"
        );
        assert!(text.contains("order to enforced  3.2 ms\n"), "{text}");
    }

    #[test]
    fn durations_are_milliseconds_across_second_boundaries() {
        assert_eq!(
            millis_between(at(10, 999_000_000).as_ref(), at(11, 1_500_000).as_ref()),
            "2.5 ms"
        );
        assert_eq!(
            millis_between(at(10, 0).as_ref(), at(12, 0).as_ref()),
            "2000.0 ms"
        );
        assert_eq!(millis_between(at(10, 0).as_ref(), None), "-");
    }

    #[test]
    fn unspecified_mode_is_shown_as_node_probes() {
        assert_eq!(mode(IsolationMode::Unspecified.into()), "node-probes");
        assert_eq!(mode(IsolationMode::AllowNodeProbes.into()), "node-probes");
        assert_eq!(mode(IsolationMode::Strict.into()), "strict");
    }

    #[test]
    fn doctor_fails_only_for_missing_features_that_an_order_needs() {
        let feature = |name: &str, available, needed_by: &[&str]| KernelFeature {
            name: name.into(),
            available,
            detail: if available {
                String::new()
            } else {
                format!("no {name}")
            },
            needed_by: needed_by.iter().map(|s| s.to_string()).collect(),
        };
        let optional = [
            feature("cgroup_skb", true, &["isolate"]),
            feature("bpf_lsm", false, &[]),
        ];
        let needed = [feature("cgroup_sock_addr", false, &["isolate"])];

        let (text, problem) = doctor(&optional);
        assert!(!problem);
        assert!(
            text.contains("bpf_lsm     MISSING  -          no bpf_lsm"),
            "{text}"
        );

        let (text, problem) = doctor(&needed);
        assert!(problem);
        assert!(
            text.contains("will fail with FAILED_PRECONDITION: isolate"),
            "{text}"
        );
    }
}

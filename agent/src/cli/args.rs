//! Command-line flags and arguments. Every flag can also be set through
//! the environment variable named in its help.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use stockade_proto::v1::{pod_selector::Target, AllowRule, PodName, PodSelector};

use super::{
    allow::parse_allow_rule,
    contain::{KillArgs, MetaArgs, OrderArgs, UndoArgs},
    orders::{parse_ttl, ExtendArgs, GetArgs, ListArgs},
};

#[derive(Debug, Parser)]
#[command(
    name = "stockade",
    version,
    about = "Ask and order the Stockade agent of this node"
)]
pub struct Cli {
    /// The agent's Unix socket.
    #[arg(
        long,
        global = true,
        env = "STOCKADE_SOCKET",
        default_value = "/run/stockade/agent.sock"
    )]
    pub socket: PathBuf,

    /// How to print replies.
    #[arg(
        short,
        long,
        global = true,
        env = "STOCKADE_OUTPUT",
        value_enum,
        default_value_t = Output::Table
    )]
    pub output: Output,

    /// Deadline for connecting and for each request, as 10s, 500ms or 2m.
    #[arg(
        long,
        global = true,
        env = "STOCKADE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,

    /// An agent's mutual-TLS listener, as https://HOST:PORT, instead of
    /// the local socket; needs --ca, --cert and --key.
    // Not `requires_all`: clap checks it in the subcommand before global
    // flags given ahead of it are carried over, so `remote` checks instead.
    #[arg(long, global = true, env = "STOCKADE_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,

    /// The CA certificate (PEM) that signed the agent's certificate.
    #[arg(long, global = true, env = "STOCKADE_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,

    /// This client's certificate (PEM), naming its identity.
    #[arg(long, global = true, env = "STOCKADE_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,

    /// This client's private key (PEM).
    #[arg(long, global = true, env = "STOCKADE_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,

    /// The name the agent's certificate must hold, when it is not the
    /// endpoint's host.
    #[arg(long, global = true, env = "STOCKADE_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The remote agent to reach, when --endpoint is given; the name of
    /// the first flag it also needs that is missing, if any.
    pub fn remote(&self) -> Result<Option<crate::access::tls::ClientTls>, &'static str> {
        let Some(endpoint) = self.endpoint.clone() else {
            return Ok(None);
        };
        let need = |value: &Option<PathBuf>, flag| value.clone().ok_or(flag);
        Ok(Some(crate::access::tls::ClientTls {
            endpoint,
            ca: need(&self.ca, "--ca")?,
            cert: need(&self.cert, "--cert")?,
            key: need(&self.key, "--key")?,
            server_name: self.server_name.clone(),
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns, for people.
    Table,
    /// The agent's reply as JSON, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The agent's version and node, and how many pods and isolations it has.
    Status,
    /// The kernel features the agent found; exits with 1 if an order lacks one.
    Doctor,
    /// The pods on this node, with their cgroups.
    Pods,
    /// Cut a pod's network, except loopback and the allowed destinations.
    Isolate(IsolateArgs),
    /// Lift a pod's isolation.
    Release(ReleaseArgs),
    /// The isolations in force on this node, as read back from the kernel.
    Isolations,
    /// Stop every process of a pod where it stands (cgroup.freeze).
    Freeze(OrderArgs),
    /// Let a frozen pod run again.
    Thaw(UndoArgs),
    /// Kill every process of a pod, or of one container (--container).
    Kill(KillArgs),
    /// Kill a pod, then delete it through the API server (grace period 0).
    Terminate(OrderArgs),
    /// Kill any program the pod starts from now on (exec guard).
    Contain(OrderArgs),
    /// Lift a pod's exec guard.
    Uncontain(UndoArgs),
    /// The orders in the agent's ledger, newest first.
    Orders(ListArgs),
    /// One order from the agent's ledger.
    Order(GetArgs),
    /// Change when an isolation ends by itself (--ttl 0: never).
    Extend(ExtendArgs),
}

/// The pod an order is for: `NAMESPACE/NAME` or `--uid UID`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PodArg {
    /// The pod, as NAMESPACE/NAME.
    #[arg(value_name = "POD", value_parser = parse_pod_name)]
    pub pod: Option<PodName>,

    /// The pod's UID (metadata.uid), instead of NAMESPACE/NAME.
    #[arg(long, env = "STOCKADE_POD_UID")]
    pub uid: Option<String>,
}

impl PodArg {
    pub fn selector(&self) -> PodSelector {
        let target = match (&self.pod, &self.uid) {
            (Some(name), _) => Target::Name(name.clone()),
            (None, uid) => Target::Uid(uid.clone().unwrap_or_default()),
        };
        PodSelector {
            target: Some(target),
        }
    }
}

#[derive(Debug, Args)]
pub struct IsolateArgs {
    #[command(flatten)]
    pub pod: PodArg,

    /// A destination the pod may still reach: CIDR[:PROTO[:PORT[-PORT]]],
    /// e.g. 10.0.0.10/32:tcp:443, 10.96.0.10:udp:53, fd00::/64,
    /// [fd00::1]:tcp:22. PROTO is tcp, udp, icmp or any. Repeatable.
    #[arg(
        long,
        value_name = "RULE",
        env = "STOCKADE_ALLOW",
        value_delimiter = ',',
        value_parser = parse_allow_rule
    )]
    pub allow: Vec<AllowRule>,

    /// Block the node's own addresses too, kubelet probes included.
    #[arg(long, env = "STOCKADE_STRICT")]
    pub strict: bool,

    /// Why, in a few words; recorded with the order.
    #[arg(long, env = "STOCKADE_REASON", value_parser = parse_reason)]
    pub reason: String,

    /// Reference of the alert or incident.
    #[arg(
        long = "ref",
        env = "STOCKADE_REF",
        default_value = "",
        hide_default_value = true
    )]
    pub reference: String,

    /// Release the isolation by itself after this long, as 90s, 10m or
    /// 1h; 0 (the default) means never.
    #[arg(long, env = "STOCKADE_TTL", value_parser = parse_ttl, default_value = "0")]
    pub ttl: Duration,

    #[command(flatten)]
    pub meta: MetaArgs,
}

/// The pods a release is for: `NAMESPACE/NAME`, `--uid UID` or `--all`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReleaseTarget {
    /// The pod, as NAMESPACE/NAME.
    #[arg(value_name = "POD", value_parser = parse_pod_name)]
    pub pod: Option<PodName>,

    /// The pod's UID (metadata.uid), instead of NAMESPACE/NAME.
    #[arg(long, env = "STOCKADE_POD_UID")]
    pub uid: Option<String>,

    /// Every isolation on this node.
    #[arg(long)]
    pub all: bool,
}

impl ReleaseTarget {
    /// The selector of one pod; `None` for `--all`.
    pub fn selector(&self) -> Option<PodSelector> {
        let target = match (&self.pod, &self.uid) {
            (Some(name), _) => Target::Name(name.clone()),
            (None, Some(uid)) => Target::Uid(uid.clone()),
            (None, None) => return None,
        };
        Some(PodSelector {
            target: Some(target),
        })
    }
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub pod: ReleaseTarget,

    /// Why, in a few words; recorded with the order.
    #[arg(
        long,
        env = "STOCKADE_REASON",
        default_value = "",
        hide_default_value = true
    )]
    pub reason: String,

    #[command(flatten)]
    pub meta: MetaArgs,
}

/// `NAMESPACE/NAME`, both parts non-empty.
fn parse_pod_name(text: &str) -> Result<PodName, String> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(PodName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        _ => Err(format!(
            "expected NAMESPACE/NAME (or --uid UID), got `{text}`"
        )),
    }
}

pub(super) fn parse_reason(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("say why, in a few words".to_string());
    }
    Ok(text.to_string())
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds; never zero.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 10s or 500ms, got `{text}`"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        _ => return Err(format!("unknown unit `{unit}`: use ms, s or m")),
    };
    if duration.is_zero() {
        return Err("the timeout must be more than zero".to_string());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_take_units_and_refuse_zero() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("3"), Ok(Duration::from_secs(3)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("1h").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn a_bad_allow_rule_is_refused_naming_the_flag() {
        let args = [
            "stockade",
            "isolate",
            "ns/pod",
            "--reason",
            "r",
            "--allow",
            "10.0.0.1:443",
        ];

        let err = Cli::try_parse_from(args).unwrap_err().to_string();

        assert!(err.contains("--allow"), "{err}");
        assert!(err.contains("unknown protocol `443`"), "{err}");
    }

    #[test]
    fn the_pod_is_named_by_namespace_and_name_or_by_uid_but_not_both() {
        let by_name = ["stockade", "release", "ns/pod"];
        let by_uid = ["stockade", "release", "--uid", "0b1e"];
        let both = ["stockade", "release", "ns/pod", "--uid", "0b1e"];
        let neither = ["stockade", "release"];
        let half = ["stockade", "release", "pod"];

        assert!(Cli::try_parse_from(by_name).is_ok());
        assert!(Cli::try_parse_from(by_uid).is_ok());
        assert!(Cli::try_parse_from(both).is_err());
        assert!(Cli::try_parse_from(neither).is_err());
        assert!(Cli::try_parse_from(half).is_err());
    }

    #[test]
    fn isolate_needs_a_reason() {
        let args = ["stockade", "isolate", "ns/pod"];
        let blank = ["stockade", "isolate", "ns/pod", "--reason", " "];

        assert!(Cli::try_parse_from(args).is_err());
        assert!(Cli::try_parse_from(blank).is_err());
    }
}

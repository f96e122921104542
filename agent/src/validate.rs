//! Validating incoming orders: the generated `stockade.v1` messages become
//! domain types, or a [`FieldError`] naming the exact field and why.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use stockade_ebpf::abi::{
    StkPolicy, StkRule, STK_MAX_ALLOW, STK_PROTO_ANY, STK_PROTO_ICMP, STK_PROTO_ICMPV6,
    STK_PROTO_TCP, STK_PROTO_UDP,
};
use stockade_proto::v1::{
    pod_selector::Target, AllowRule, IsolateRequest, IsolationMode, PodSelector, Protocol,
    ReleaseRequest,
};

use crate::cgroup::PodUid;

/// The longest `reason` or `reference`, in characters.
const MAX_TEXT: usize = 256;
/// Kubernetes limits: a DNS-1123 label (namespace) and subdomain (name).
const MAX_LABEL: usize = 63;
const MAX_SUBDOMAIN: usize = 253;
/// Longer than any CIDR; refused before parsing.
const MAX_CIDR: usize = 64;

/// A refused field: its path in the request (`allow[2].cidr`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The pod an order names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodTarget {
    Name { namespace: String, name: String },
    Uid(PodUid),
}

impl fmt::Display for PodTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::Uid(uid) => write!(f, "uid {uid}"),
        }
    }
}

/// The protocol of an allow-list entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    /// ICMP, and ICMPv6 towards IPv6 peers.
    Icmp,
}

impl Proto {
    fn abi(self) -> u8 {
        match self {
            Self::Any => STK_PROTO_ANY,
            Self::Tcp => STK_PROTO_TCP,
            Self::Udp => STK_PROTO_UDP,
            Self::Icmp => STK_PROTO_ICMP,
        }
    }

    fn to_proto(self) -> Protocol {
        match self {
            Self::Any => Protocol::Any,
            Self::Tcp => Protocol::Tcp,
            Self::Udp => Protocol::Udp,
            Self::Icmp => Protocol::Icmp,
        }
    }
}

/// One destination an isolated pod may still reach. `net` has no host
/// bits set, and an IPv4 peer is always `V4`, even if it was written in
/// v4-mapped IPv6 form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    pub net: IpNet,
    pub proto: Proto,
    /// The remote port range, inclusive; `None` for every port.
    pub ports: Option<(u16, u16)>,
}

impl AllowEntry {
    /// The kernel's form: a 16-byte address (IPv4 as `::ffff:a.b.c.d`,
    /// prefix + 96), the network address masked, ports in host order.
    pub fn to_rule(&self) -> StkRule {
        let (addr, prefix_len) = match self.net.trunc() {
            IpNet::V4(net) => (
                net.network().to_ipv6_mapped().octets(),
                net.prefix_len() + 96,
            ),
            IpNet::V6(net) => (net.network().octets(), net.prefix_len()),
        };
        let (port_lo, port_hi) = self.ports.unwrap_or((0, 0));
        StkRule {
            addr,
            prefix_len,
            proto: self.proto.abi(),
            port_lo,
            port_hi,
            _pad: 0,
        }
    }

    /// The API's form; validating it gives this entry back.
    pub fn to_proto(&self) -> AllowRule {
        let (port, port_end) = self.ports.unwrap_or((0, 0));
        AllowRule {
            cidr: self.net.trunc().to_string(),
            protocol: self.proto.to_proto() as i32,
            port: port.into(),
            port_end: port_end.into(),
        }
    }

    /// The entry a kernel rule stands for, or `None` for a rule this
    /// module could not have written (unknown protocol, prefix over 128).
    pub fn from_rule(rule: &StkRule) -> Option<Self> {
        let addr = Ipv6Addr::from(rule.addr);
        let net = match addr.to_ipv4_mapped() {
            Some(v4) if rule.prefix_len >= 96 => {
                IpNet::V4(Ipv4Net::new(v4, rule.prefix_len - 96).ok()?)
            }
            _ => IpNet::V6(Ipv6Net::new(addr, rule.prefix_len).ok()?),
        };
        let proto = match rule.proto {
            STK_PROTO_ANY => Proto::Any,
            STK_PROTO_TCP => Proto::Tcp,
            STK_PROTO_UDP => Proto::Udp,
            STK_PROTO_ICMP | STK_PROTO_ICMPV6 => Proto::Icmp,
            _ => return None,
        };
        let ports = match (rule.port_lo, rule.port_hi) {
            (0, 0) => None,
            range => Some(range),
        };
        Some(Self {
            net: net.trunc(),
            proto,
            ports,
        })
    }
}

/// The allow-list of a policy read back from the kernel, for display and
/// adoption after a restart. Rules [`AllowEntry::from_rule`] does not
/// understand are left out; the kernel's policy itself is not touched.
pub fn entries_from_policy(policy: &StkPolicy) -> Vec<AllowEntry> {
    let count = usize::try_from(policy.n_rules).map_or(STK_MAX_ALLOW, |n| n.min(STK_MAX_ALLOW));
    policy.rules[..count]
        .iter()
        .filter_map(AllowEntry::from_rule)
        .collect()
}

/// How much of the node may still reach an isolated pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The node's own addresses may open TCP sessions to the pod, so that
    /// the kubelet's probes do not restart its containers.
    AllowNodeProbes,
    /// Nothing but loopback and the allow-list.
    Strict,
}

/// A validated `Isolate` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolateOrder {
    pub target: PodTarget,
    pub allow: Vec<AllowEntry>,
    pub mode: Mode,
    pub reason: String,
    pub reference: String,
}

/// Validates an `Isolate` request.
pub fn isolate(req: &IsolateRequest) -> Result<IsolateOrder, FieldError> {
    let target = pod_selector(req.pod.as_ref(), "pod")?;
    let allow = allow_list(&req.allow)?;
    let mode = mode(req.mode)?;
    let reason = free_text(&req.reason, "reason", true)?;
    let reference = free_text(&req.reference, "reference", false)?;
    Ok(IsolateOrder {
        target,
        allow,
        mode,
        reason,
        reference,
    })
}

/// Validates a `Release` request: the pod, and the reason (required).
pub fn release(req: &ReleaseRequest) -> Result<(PodTarget, String), FieldError> {
    let target = pod_selector(req.pod.as_ref(), "pod")?;
    let reason = free_text(&req.reason, "reason", true)?;
    Ok((target, reason))
}

/// Validates a pod selector found at `field` of its request.
pub fn pod_selector(sel: Option<&PodSelector>, field: &str) -> Result<PodTarget, FieldError> {
    let missing = || FieldError::new(field, "required: a pod name or UID");
    match sel
        .and_then(|sel| sel.target.as_ref())
        .ok_or_else(missing)?
    {
        Target::Name(pod) => {
            let namespace_field = format!("{field}.name.namespace");
            dns_label(&pod.namespace).map_err(|reason| FieldError::new(namespace_field, reason))?;
            let name_field = format!("{field}.name.name");
            dns_subdomain(&pod.name).map_err(|reason| FieldError::new(name_field, reason))?;
            Ok(PodTarget::Name {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            })
        }
        Target::Uid(uid) => uid.parse().map(PodTarget::Uid).map_err(|_| {
            let reason = "not a UUID like aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
            FieldError::new(format!("{field}.uid"), reason)
        }),
    }
}

fn mode(value: i32) -> Result<Mode, FieldError> {
    match IsolationMode::try_from(value) {
        Ok(IsolationMode::Unspecified | IsolationMode::AllowNodeProbes) => {
            Ok(Mode::AllowNodeProbes)
        }
        Ok(IsolationMode::Strict) => Ok(Mode::Strict),
        Err(_) => Err(FieldError::new(
            "mode",
            format!("unknown isolation mode {value}"),
        )),
    }
}

/// `reason` and `reference`: at most [`MAX_TEXT`] characters, no control
/// characters, and not blank when `required`.
pub(crate) fn free_text(text: &str, field: &str, required: bool) -> Result<String, FieldError> {
    if required && text.trim().is_empty() {
        return Err(FieldError::new(field, "required"));
    }
    let len = text.chars().count();
    if len > MAX_TEXT {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_TEXT} characters, got {len}"),
        ));
    }
    if let Some(c) = text.chars().find(|&c| hides_text(c)) {
        return Err(FieldError::new(
            field,
            format!("control character {c:?} is not allowed"),
        ));
    }
    Ok(text.to_owned())
}

/// Control characters, and the line separators and bidirectional
/// overrides that can make a log line read differently from what it says.
fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A namespace: a DNS-1123 label.
pub(crate) fn dns_label(text: &str) -> Result<(), String> {
    check_length(text, MAX_LABEL)?;
    check_chars(
        text,
        "a-z, 0-9 and '-'",
        |c| matches!(c, 'a'..='z' | '0'..='9' | '-'),
    )?;
    check_ends(text)
}

/// A pod name: a DNS-1123 subdomain, labels joined by dots. As in
/// Kubernetes, only the whole name is limited in length, not each label.
fn dns_subdomain(text: &str) -> Result<(), String> {
    check_length(text, MAX_SUBDOMAIN)?;
    check_chars(
        text,
        "a-z, 0-9, '-' and '.'",
        |c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '.'),
    )?;
    text.split('.').try_for_each(|label| match label {
        "" => Err("has an empty label between dots".to_owned()),
        label => check_ends(label),
    })
}

fn check_length(text: &str, max: usize) -> Result<(), String> {
    let len = text.chars().count();
    match len {
        0 => Err("required".to_owned()),
        len if len > max => Err(format!("at most {max} characters, got {len}")),
        _ => Ok(()),
    }
}

fn check_chars(text: &str, allowed: &str, ok: impl Fn(char) -> bool) -> Result<(), String> {
    match text.chars().position(|c| !ok(c)) {
        Some(at) => {
            let c = text.chars().nth(at).unwrap_or_default();
            Err(format!(
                "character {c:?} at {at} is not allowed: only {allowed}"
            ))
        }
        None => Ok(()),
    }
}

fn check_ends(label: &str) -> Result<(), String> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if alnum(label.chars().next()) && alnum(label.chars().last()) {
        Ok(())
    } else {
        Err("must start and end with a letter or digit".to_owned())
    }
}

fn allow_list(rules: &[AllowRule]) -> Result<Vec<AllowEntry>, FieldError> {
    if rules.len() > STK_MAX_ALLOW {
        let reason = format!("at most {STK_MAX_ALLOW} entries, got {}", rules.len());
        return Err(FieldError::new("allow", reason));
    }
    let entries = rules.iter().enumerate();
    entries
        .map(|(i, rule)| allow_rule(rule, &format!("allow[{i}]")))
        .collect()
}

fn allow_rule(rule: &AllowRule, field: &str) -> Result<AllowEntry, FieldError> {
    let net =
        cidr(&rule.cidr).map_err(|reason| FieldError::new(format!("{field}.cidr"), reason))?;
    let proto = match Protocol::try_from(rule.protocol) {
        Ok(Protocol::Any) => Proto::Any,
        Ok(Protocol::Tcp) => Proto::Tcp,
        Ok(Protocol::Udp) => Proto::Udp,
        Ok(Protocol::Icmp) => Proto::Icmp,
        Err(_) => {
            let reason = format!("unknown protocol {}", rule.protocol);
            return Err(FieldError::new(format!("{field}.protocol"), reason));
        }
    };
    let ports = ports(rule, proto, field)?;
    Ok(AllowEntry { net, proto, ports })
}

/// `port` and `port_end` as an inclusive range; `None` for every port.
fn ports(rule: &AllowRule, proto: Proto, field: &str) -> Result<Option<(u16, u16)>, FieldError> {
    let port_field = format!("{field}.port");
    let end_field = format!("{field}.port_end");
    let port = to_port(rule.port, &port_field)?;
    let end = to_port(rule.port_end, &end_field)?;

    if (port, end) == (0, 0) {
        return Ok(None);
    }
    if !matches!(proto, Proto::Tcp | Proto::Udp) {
        let field = if port != 0 { port_field } else { end_field };
        return Err(FieldError::new(field, "ports need tcp or udp"));
    }
    if port == 0 {
        return Err(FieldError::new(
            end_field,
            "set without port (port 0 means every port)",
        ));
    }

    match end {
        0 => Ok(Some((port, port))),
        end if end < port => Err(FieldError::new(
            end_field,
            format!("{end} is below port {port}"),
        )),
        end => Ok(Some((port, end))),
    }
}

fn to_port(value: u32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(value)
        .map_err(|_| FieldError::new(field, format!("{value} is out of range 0-65535")))
}

/// An IPv4 or IPv6 CIDR, or a bare address for one host. v4-mapped IPv6
/// networks become IPv4 ones, so that the two spellings make one rule.
fn cidr(text: &str) -> Result<IpNet, String> {
    if text.is_empty() {
        return Err("required".to_owned());
    }
    if text.len() > MAX_CIDR {
        return Err(format!("at most {MAX_CIDR} characters, got {}", text.len()));
    }
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| "not an IPv4 or IPv6 address or CIDR (10.0.0.0/8, fd00::/64)".to_owned())?;

    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(prefix) => prefix_len(prefix, max)?,
        None => max,
    };
    let net = IpNet::new(addr, prefix).map_err(|_| format!("prefix /{prefix} is out of range"))?;
    if net.trunc() != net {
        return Err(format!("host bits set, did you mean {}", net.trunc()));
    }

    let net = unmap(net);
    if net.prefix_len() == 0 {
        return Err("matches every address, which is no isolation; release the pod".to_owned());
    }
    Ok(net)
}

fn prefix_len(text: &str, max: u8) -> Result<u8, String> {
    let out_of_range = || {
        let family = if max == 32 { "IPv4" } else { "IPv6" };
        format!("prefix /{text} is out of range 0-{max} for {family}")
    };
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "prefix {:?} is not a number",
            text.chars().take(8).collect::<String>()
        ));
    }
    text.parse()
        .ok()
        .filter(|&len| len <= max)
        .ok_or_else(out_of_range)
}

/// `::ffff:a.b.c.d/96+n` as `a.b.c.d/n`.
fn unmap(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else { return net };
    match v6.addr().to_ipv4_mapped() {
        Some(v4) if v6.prefix_len() >= 96 => {
            Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
        }
        _ => net,
    }
}

/// The longest order id a caller may choose, in characters.
pub const MAX_ORDER_ID: usize = 128;

/// An order id chosen by the caller, so that a retried order acts once:
/// optional (empty is `None`); at most [`MAX_ORDER_ID`] letters, digits,
/// '.', '_', ':' and '-', so that it is safe in logs, paths and keys.
pub fn order_id(text: &str, field: &str) -> Result<Option<String>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    let len = text.chars().count();
    if len > MAX_ORDER_ID {
        let reason = format!("at most {MAX_ORDER_ID} characters, got {len}");
        return Err(FieldError::new(field, reason));
    }
    let allowed = "letters, digits, '.', '_', ':' and '-'";
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    check_chars(text, allowed, ok).map_err(|reason| FieldError::new(field, reason))?;
    Ok(Some(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use stockade_proto::v1::PodName;

    use super::*;

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

    fn by_uid(uid: &str) -> Option<PodSelector> {
        Some(PodSelector {
            target: Some(Target::Uid(uid.to_owned())),
        })
    }

    fn by_name(namespace: &str, name: &str) -> Option<PodSelector> {
        let name = PodName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        Some(PodSelector {
            target: Some(Target::Name(name)),
        })
    }

    fn request(allow: Vec<AllowRule>) -> IsolateRequest {
        IsolateRequest {
            order_id: String::new(),
            ttl_seconds: 0,
            pod: by_uid(UID),
            allow,
            mode: 0,
            reason: "alert 42".to_owned(),
            reference: String::new(),
            dry_run: false,
        }
    }

    fn rule(cidr: &str, protocol: Protocol, port: u32, port_end: u32) -> AllowRule {
        AllowRule {
            cidr: cidr.to_owned(),
            protocol: protocol as i32,
            port,
            port_end,
        }
    }

    /// The error of an isolate request, as (field, reason).
    fn refusal(req: &IsolateRequest) -> (String, String) {
        let err = isolate(req).unwrap_err();
        (err.field, err.reason)
    }

    fn refused_rule(rule: AllowRule) -> (String, String) {
        refusal(&request(vec![rule]))
    }

    fn entry(rule: AllowRule) -> AllowEntry {
        isolate(&request(vec![rule])).unwrap().allow.remove(0)
    }

    #[test]
    fn a_full_order_validates() {
        let req = IsolateRequest {
            order_id: String::new(),
            ttl_seconds: 0,
            pod: by_name("forensics-1", "web-7d4b9c.x"),
            allow: vec![rule("10.0.0.10", Protocol::Tcp, 443, 0)],
            mode: IsolationMode::Strict as i32,
            reason: "Falco: shell in container — réponse".to_owned(),
            reference: "INC-1234".to_owned(),
            dry_run: false,
        };
        let expected = IsolateOrder {
            target: PodTarget::Name {
                namespace: "forensics-1".to_owned(),
                name: "web-7d4b9c.x".to_owned(),
            },
            allow: vec![AllowEntry {
                net: "10.0.0.10/32".parse().unwrap(),
                proto: Proto::Tcp,
                ports: Some((443, 443)),
            }],
            mode: Mode::Strict,
            reason: req.reason.clone(),
            reference: "INC-1234".to_owned(),
        };
        assert_eq!(isolate(&req).unwrap(), expected);
    }

    #[test]
    fn field_error_displays_field_then_reason() {
        let err = FieldError::new("allow[2].cidr", "bad");
        assert_eq!(err.to_string(), "allow[2].cidr: bad");
    }

    #[test]
    fn a_missing_selector_is_field_pod() {
        let mut req = request(vec![]);
        req.pod = None;
        assert_eq!(refusal(&req).0, "pod");
        req.pod = Some(PodSelector { target: None });
        assert_eq!(refusal(&req).0, "pod");
        let release_req = ReleaseRequest {
            order_id: String::new(),
            all: false,
            pod: None,
            reason: "done".to_owned(),
            dry_run: false,
        };
        assert_eq!(release(&release_req).unwrap_err().field, "pod");
    }

    #[test]
    fn uids_are_normalized_to_lower_case() {
        let mut req = request(vec![]);
        req.pod = by_uid(&UID.to_uppercase());
        assert_eq!(
            isolate(&req).unwrap().target,
            PodTarget::Uid(UID.parse().unwrap())
        );
    }

    #[test]
    fn non_uuid_uids_are_refused() {
        let bad = [
            "",
            "x",
            &UID[1..],
            &format!("{UID}0"),
            "../../etc/passwd",
            &UID.replace('-', "_"),
        ];
        for uid in bad {
            let mut req = request(vec![]);
            req.pod = by_uid(uid);
            assert_eq!(refusal(&req).0, "pod.uid", "{uid:?}");
        }
    }

    #[test]
    fn hostile_namespaces_are_refused() {
        let long = "a".repeat(64);
        for namespace in [
            "",
            "../../etc",
            "Default",
            "-a",
            "a-",
            "a.b",
            "a b",
            "a\0",
            &long,
            "é",
        ] {
            let mut req = request(vec![]);
            req.pod = by_name(namespace, "web");
            assert_eq!(refusal(&req).0, "pod.name.namespace", "{namespace:?}");
        }
        let mut req = request(vec![]);
        req.pod = by_name(&"a".repeat(63), "web");
        assert!(isolate(&req).is_ok());
    }

    #[test]
    fn hostile_pod_names_are_refused() {
        let long = "a".repeat(300);
        let bad = [
            "", "../etc", "a..b", ".a", "a.", "a.-b", "Web", "web/x", "web\n", &long,
        ];
        for name in bad {
            let mut req = request(vec![]);
            req.pod = by_name("default", name);
            assert_eq!(refusal(&req).0, "pod.name.name", "{name:?}");
        }
        let mut req = request(vec![]);
        req.pod = by_name("default", &format!("{}.b", "a".repeat(251)));
        assert!(isolate(&req).is_ok());
        req.pod = by_name("default", &"a".repeat(254));
        assert_eq!(
            refusal(&req),
            (
                "pod.name.name".into(),
                "at most 253 characters, got 254".into()
            )
        );
    }

    #[test]
    fn reason_is_required_and_bounded() {
        let cases = [
            ("", "required"),
            ("   ", "required"),
            ("a\nb", "control character '\\n' is not allowed"),
            ("a\u{1b}[31m", "control character '\\u{1b}' is not allowed"),
            ("a\u{202e}b", "control character '\\u{202e}' is not allowed"),
        ];
        for (reason, why) in cases {
            let mut req = request(vec![]);
            req.reason = reason.to_owned();
            assert_eq!(
                refusal(&req),
                ("reason".to_owned(), why.to_owned()),
                "{reason:?}"
            );
        }
        let mut req = request(vec![]);
        req.reason = "é".repeat(256);
        assert!(isolate(&req).is_ok(), "256 characters, more bytes");
        req.reason = "x".repeat(257);
        assert_eq!(refusal(&req).1, "at most 256 characters, got 257");
        let release_req = ReleaseRequest {
            order_id: String::new(),
            all: false,
            pod: by_uid(UID),
            reason: String::new(),
            dry_run: false,
        };
        assert_eq!(release(&release_req).unwrap_err().field, "reason");
    }

    #[test]
    fn reference_is_optional_and_bounded() {
        let mut req = request(vec![]);
        req.reference = "x".repeat(257);
        assert_eq!(refusal(&req).0, "reference");
        req.reference = "a\tb".to_owned();
        assert_eq!(refusal(&req).0, "reference");
        req.reference = "x".repeat(256);
        assert!(isolate(&req).is_ok());
    }

    #[test]
    fn release_gives_the_target_and_reason() {
        let req = ReleaseRequest {
            order_id: String::new(),
            all: false,
            pod: by_name("ns", "p"),
            reason: "cleared".to_owned(),
            dry_run: false,
        };
        let target = PodTarget::Name {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
        };
        assert_eq!(release(&req).unwrap(), (target, "cleared".to_owned()));
    }

    #[test]
    fn modes_and_unknown_enum_values() {
        let mut req = request(vec![]);
        for (value, mode) in [
            (0, Mode::AllowNodeProbes),
            (1, Mode::AllowNodeProbes),
            (2, Mode::Strict),
        ] {
            req.mode = value;
            assert_eq!(isolate(&req).unwrap().mode, mode);
        }
        req.mode = 3;
        assert_eq!(
            refusal(&req),
            ("mode".into(), "unknown isolation mode 3".into())
        );
        req.mode = -1;
        assert_eq!(refusal(&req).0, "mode");

        let mut bad = rule("10.0.0.0/8", Protocol::Any, 0, 0);
        bad.protocol = 9;
        assert_eq!(
            refused_rule(bad),
            ("allow[0].protocol".into(), "unknown protocol 9".into())
        );
    }

    #[test]
    fn at_most_sixteen_entries() {
        let rules = |n| {
            (0..n)
                .map(|i| rule(&format!("10.0.0.{i}"), Protocol::Any, 0, 0))
                .collect()
        };
        assert_eq!(isolate(&request(rules(16))).unwrap().allow.len(), 16);
        assert_eq!(
            refusal(&request(rules(17))),
            ("allow".into(), "at most 16 entries, got 17".into())
        );
    }

    #[test]
    fn every_refusal_names_the_entry_index() {
        let rules = vec![
            rule("10.0.0.0/8", Protocol::Any, 0, 0),
            rule("fd00::/64", Protocol::Udp, 53, 0),
            rule("10.0.0.1/8", Protocol::Any, 0, 0),
        ];
        assert_eq!(refusal(&request(rules)).0, "allow[2].cidr");
    }

    #[test]
    fn cidrs_and_bare_addresses() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("10.1.2.3/32", "10.1.2.3/32"),
            ("fd00::/64", "fd00::/64"),
            ("fd00::1", "fd00::1/128"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
            ("::/1", "::/1"),
        ];
        for (cidr, net) in cases {
            assert_eq!(
                entry(rule(cidr, Protocol::Any, 0, 0)).net,
                net.parse::<IpNet>().unwrap(),
                "{cidr}"
            );
        }
    }

    #[test]
    fn bad_cidrs_name_the_field_and_why() {
        let cases = [
            ("", "required"),
            ("10.0.0.1/8", "host bits set, did you mean 10.0.0.0/8"),
            ("fd00::1/64", "host bits set, did you mean fd00::/64"),
            ("10.0.0.0/33", "prefix /33 is out of range 0-32 for IPv4"),
            ("fd00::/129", "prefix /129 is out of range 0-128 for IPv6"),
            ("10.0.0.0/", "prefix \"\" is not a number"),
            ("10.0.0.0/+8", "prefix \"+8\" is not a number"),
            ("10.0.0.0/0008", "prefix \"0008\" is not a number"),
            (
                "0.0.0.0/0",
                "matches every address, which is no isolation; release the pod",
            ),
            (
                "::/0",
                "matches every address, which is no isolation; release the pod",
            ),
            (
                "::ffff:0.0.0.0/96",
                "matches every address, which is no isolation; release the pod",
            ),
        ];
        for (cidr, reason) in cases {
            let got = refused_rule(rule(cidr, Protocol::Any, 0, 0));
            assert_eq!(
                got,
                ("allow[0].cidr".to_owned(), reason.to_owned()),
                "{cidr}"
            );
        }
        let unparsable = [
            "10.0.0",
            "010.0.0.1",
            "10.0.0.0/8/8",
            "fe80::1%eth0",
            " 10.0.0.1",
            "host",
        ];
        for cidr in unparsable.into_iter().chain([&*"1".repeat(100)]) {
            assert_eq!(
                refused_rule(rule(cidr, Protocol::Any, 0, 0)).0,
                "allow[0].cidr",
                "{cidr}"
            );
        }
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(entry(rule("10.0.0.1", Protocol::Tcp, 0, 0)).ports, None);
        assert_eq!(
            entry(rule("10.0.0.1", Protocol::Tcp, 80, 0)).ports,
            Some((80, 80))
        );
        assert_eq!(
            entry(rule("10.0.0.1", Protocol::Udp, 80, 80)).ports,
            Some((80, 80))
        );
        assert_eq!(
            entry(rule("10.0.0.1", Protocol::Tcp, 1, 65535)).ports,
            Some((1, 65535))
        );
    }

    #[test]
    fn bad_ports_name_the_field_and_why() {
        let cases = [
            (
                rule("10.0.0.1", Protocol::Tcp, 70000, 0),
                "allow[0].port",
                "70000 is out of range 0-65535",
            ),
            (
                rule("10.0.0.1", Protocol::Tcp, 80, 65536),
                "allow[0].port_end",
                "65536 is out of range 0-65535",
            ),
            (
                rule("10.0.0.1", Protocol::Tcp, 443, 80),
                "allow[0].port_end",
                "80 is below port 443",
            ),
            (
                rule("10.0.0.1", Protocol::Tcp, 0, 80),
                "allow[0].port_end",
                "set without port (port 0 means every port)",
            ),
            (
                rule("10.0.0.1", Protocol::Icmp, 80, 0),
                "allow[0].port",
                "ports need tcp or udp",
            ),
            (
                rule("10.0.0.1", Protocol::Any, 80, 90),
                "allow[0].port",
                "ports need tcp or udp",
            ),
            (
                rule("10.0.0.1", Protocol::Any, 0, 90),
                "allow[0].port_end",
                "ports need tcp or udp",
            ),
            (
                rule("10.0.0.1", Protocol::Tcp, u32::MAX, 0),
                "allow[0].port",
                "4294967295 is out of range 0-65535",
            ),
        ];
        for (rule, field, reason) in cases {
            assert_eq!(
                refused_rule(rule.clone()),
                (field.to_owned(), reason.to_owned()),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn v4_mapped_and_plain_ipv4_make_the_same_rule() {
        let mapped = entry(rule("::ffff:10.0.0.0/104", Protocol::Tcp, 22, 0)).to_rule();
        let plain = entry(rule("10.0.0.0/8", Protocol::Tcp, 22, 0)).to_rule();
        assert_eq!(mapped, plain);
        let mut addr = [0u8; 16];
        addr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 0]);
        let expected = StkRule {
            addr,
            prefix_len: 104,
            proto: STK_PROTO_TCP,
            port_lo: 22,
            port_hi: 22,
            _pad: 0,
        };
        assert_eq!(plain, expected);
    }

    #[test]
    fn to_rule_masks_and_encodes() {
        let entry = AllowEntry {
            net: "fd00::1/16".parse().unwrap(),
            proto: Proto::Icmp,
            ports: None,
        };
        let mut addr = [0u8; 16];
        addr[0] = 0xfd;
        let expected = StkRule {
            addr,
            prefix_len: 16,
            proto: STK_PROTO_ICMP,
            port_lo: 0,
            port_hi: 0,
            _pad: 0,
        };
        assert_eq!(entry.to_rule(), expected);
        let udp = AllowEntry {
            net: "10.0.0.9/32".parse().unwrap(),
            proto: Proto::Udp,
            ports: Some((53, 54)),
        };
        let rule = udp.to_rule();
        assert_eq!(
            (rule.proto, rule.port_lo, rule.port_hi, rule.prefix_len),
            (STK_PROTO_UDP, 53, 54, 128)
        );
    }

    #[test]
    fn entries_round_trip_through_proto_and_kernel_rules() {
        let rules = vec![
            rule("10.0.0.0/8", Protocol::Tcp, 80, 90),
            rule("fd00::/64", Protocol::Udp, 53, 0),
            rule("192.168.1.1", Protocol::Icmp, 0, 0),
            rule("::ffff:10.1.0.0/112", Protocol::Any, 0, 0),
        ];
        let order = isolate(&request(rules)).unwrap();
        let again = isolate(&request(
            order.allow.iter().map(AllowEntry::to_proto).collect(),
        ))
        .unwrap();
        assert_eq!(again.allow, order.allow);

        let mut policy = StkPolicy {
            n_rules: 4,
            ..Default::default()
        };
        for (slot, entry) in policy.rules.iter_mut().zip(&order.allow) {
            *slot = entry.to_rule();
        }
        assert_eq!(entries_from_policy(&policy), order.allow);
        policy.n_rules = u32::MAX;
        assert_eq!(entries_from_policy(&policy).len(), STK_MAX_ALLOW);
    }

    #[test]
    fn kernel_rules_this_module_could_not_write_are_left_out() {
        let bad_proto = StkRule {
            proto: 99,
            prefix_len: 128,
            ..Default::default()
        };
        let bad_prefix = StkRule {
            prefix_len: 129,
            ..Default::default()
        };
        assert_eq!(AllowEntry::from_rule(&bad_proto), None);
        assert_eq!(AllowEntry::from_rule(&bad_prefix), None);
        let icmp6 = StkRule {
            proto: STK_PROTO_ICMPV6,
            prefix_len: 128,
            ..Default::default()
        };
        assert_eq!(
            AllowEntry::from_rule(&icmp6).map(|e| e.proto),
            Some(Proto::Icmp)
        );
    }

    #[test]
    fn order_ids_are_optional_bounded_and_plain() {
        assert_eq!(order_id("", "order_id"), Ok(None));
        let id = "INC-42:isolate_web.1";
        assert_eq!(order_id(id, "order_id"), Ok(Some(id.to_owned())));
        assert!(order_id(&"a".repeat(MAX_ORDER_ID), "order_id").is_ok());
        let long = order_id(&"a".repeat(10_000), "order_id").unwrap_err();
        assert_eq!(
            long.to_string(),
            "order_id: at most 128 characters, got 10000"
        );
        for bad in ["../x", "a b", "a\nb", "é", "a/b"] {
            assert_eq!(
                order_id(bad, "order_id").unwrap_err().field,
                "order_id",
                "{bad:?}"
            );
        }
    }
}

//! The `--allow` rule syntax, `CIDR[:PROTO[:PORT[-PORT]]]`, both ways.
//!
//! IPv6 addresses hold colons themselves, so the protocol and ports are
//! taken from the right, or the address is written in brackets.

use std::net::IpAddr;

use ipnet::IpNet;
use stockade_proto::v1::{AllowRule, Protocol};

/// Why an `--allow` rule was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowSpecError {
    #[error(
        "`{text}` is not an IPv4 or IPv6 address or CIDR \
         (expected CIDR[:PROTO[:PORT[-PORT]]], e.g. 10.0.0.10/32:tcp:443)"
    )]
    InvalidAddress { text: String },

    #[error("unknown protocol `{text}`: use tcp, udp, icmp or any")]
    InvalidProtocol { text: String },

    #[error("`{text}` is not a port (1-65535) or a range PORT-PORT")]
    InvalidPort { text: String },

    #[error("the port range {first}-{last} ends before it starts")]
    ReversedRange { first: u16, last: u16 },

    #[error("icmp has no ports: drop the `:{text}`")]
    PortOnIcmp { text: String },
}

/// Parses one `--allow` rule.
pub fn parse_allow_rule(spec: &str) -> Result<AllowRule, AllowSpecError> {
    let (address, rest) = split_address(spec)?;
    let cidr = parse_cidr(address)?;
    let (protocol, ports) = match rest {
        None => (Protocol::Any, None),
        Some(rest) => match rest.split_once(':') {
            Some((protocol, ports)) => (parse_protocol(protocol)?, Some(ports)),
            None => (parse_protocol(rest)?, None),
        },
    };

    let (port, port_end) = match ports {
        Some(text) if protocol == Protocol::Icmp => {
            return Err(AllowSpecError::PortOnIcmp {
                text: text.to_string(),
            })
        }
        Some(text) => parse_ports(text)?,
        None => (0, 0),
    };
    Ok(AllowRule {
        cidr,
        protocol: protocol.into(),
        port,
        port_end,
    })
}

/// Writes a rule back in the syntax [`parse_allow_rule`] reads.
pub fn format_allow_rule(rule: &AllowRule) -> String {
    let mut text = rule.cidr.clone();
    let protocol = Protocol::try_from(rule.protocol);
    if rule.port == 0 && protocol == Ok(Protocol::Any) {
        return text;
    }
    match protocol {
        Ok(protocol) => text.push_str(&format!(":{}", protocol_word(protocol))),
        Err(_) => text.push_str(&format!(":proto{}", rule.protocol)),
    }
    match (rule.port, rule.port_end) {
        (0, _) => {}
        (port, 0) => text.push_str(&format!(":{port}")),
        (port, end) => text.push_str(&format!(":{port}-{end}")),
    }
    text
}

/// Splits `spec` into the address and what follows its colon, if anything.
fn split_address(spec: &str) -> Result<(&str, Option<&str>), AllowSpecError> {
    if let Some(bracketed) = spec.strip_prefix('[') {
        let invalid = || AllowSpecError::InvalidAddress {
            text: spec.to_string(),
        };
        let (address, rest) = bracketed.split_once(']').ok_or_else(invalid)?;
        return match rest.strip_prefix(':') {
            Some(rest) => Ok((address, Some(rest))),
            None if rest.is_empty() => Ok((address, None)),
            None => Err(invalid()),
        };
    }
    if parse_cidr(spec).is_ok() {
        return Ok((spec, None));
    }

    // From the right: `ADDRESS:PROTO` or `ADDRESS:PROTO:PORTS`.
    let words: Vec<&str> = spec.rsplitn(3, ':').collect();
    let split_at = match words.as_slice() {
        [last, ..] if is_protocol(last) => spec.len() - last.len() - 1,
        [last, protocol, _] if is_protocol(protocol) => {
            spec.len() - last.len() - protocol.len() - 2
        }
        _ => return Ok(split_ipv4(spec)),
    };
    Ok((&spec[..split_at], Some(&spec[split_at + 1..])))
}

/// At the first colon when an IPv4 address stands before it, so that an
/// unknown protocol or a port without one is reported as such.
fn split_ipv4(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((address, rest)) if parse_cidr(address).is_ok() => (address, Some(rest)),
        _ => (spec, None),
    }
}

/// A network in CIDR form, or a single address (one host).
fn parse_cidr(text: &str) -> Result<String, AllowSpecError> {
    let invalid = || AllowSpecError::InvalidAddress {
        text: text.to_string(),
    };
    if text.contains('/') {
        return text
            .parse::<IpNet>()
            .map(|net| net.to_string())
            .map_err(|_| invalid());
    }
    text.parse::<IpAddr>()
        .map(|addr| addr.to_string())
        .map_err(|_| invalid())
}

const PROTOCOLS: [(&str, Protocol); 4] = [
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("icmp", Protocol::Icmp),
    ("any", Protocol::Any),
];

fn is_protocol(word: &str) -> bool {
    parse_protocol(word).is_ok()
}

fn parse_protocol(word: &str) -> Result<Protocol, AllowSpecError> {
    PROTOCOLS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(word))
        .map(|&(_, protocol)| protocol)
        .ok_or_else(|| AllowSpecError::InvalidProtocol {
            text: word.to_string(),
        })
}

fn protocol_word(protocol: Protocol) -> &'static str {
    PROTOCOLS
        .iter()
        .find(|(_, p)| *p == protocol)
        .map_or("any", |&(name, _)| name)
}

/// `PORT` or `PORT-PORT`, as (port, port_end) with 0 for a single port.
fn parse_ports(text: &str) -> Result<(u32, u32), AllowSpecError> {
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (parse_port(first, text)?, parse_port(last, text)?),
        None => (parse_port(text, text)?, 0),
    };
    if last != 0 && last < first {
        return Err(AllowSpecError::ReversedRange { first, last });
    }
    let end = if last == first { 0 } else { last };
    Ok((first.into(), end.into()))
}

fn parse_port(word: &str, whole: &str) -> Result<u16, AllowSpecError> {
    match word.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(AllowSpecError::InvalidPort {
            text: whole.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, protocol: Protocol, port: u32, port_end: u32) -> AllowRule {
        AllowRule {
            cidr: cidr.to_string(),
            protocol: protocol.into(),
            port,
            port_end,
        }
    }

    #[test]
    fn ipv4_cidr_with_protocol_and_port_is_parsed() {
        let parsed = parse_allow_rule("10.0.0.10/32:tcp:443");

        assert_eq!(parsed, Ok(rule("10.0.0.10/32", Protocol::Tcp, 443, 0)));
    }

    #[test]
    fn bare_address_means_one_host() {
        let parsed = parse_allow_rule("10.96.0.10:udp:53");

        assert_eq!(parsed, Ok(rule("10.96.0.10", Protocol::Udp, 53, 0)));
    }

    #[test]
    fn ipv6_cidr_alone_allows_any_protocol() {
        assert_eq!(
            parse_allow_rule("fd00::/64"),
            Ok(rule("fd00::/64", Protocol::Any, 0, 0))
        );
        assert_eq!(
            parse_allow_rule("fd00::1:2"),
            Ok(rule("fd00::1:2", Protocol::Any, 0, 0))
        );
    }

    #[test]
    fn ipv6_protocol_and_ports_are_taken_from_the_right() {
        let parsed = parse_allow_rule("fd00::1:UDP:5000-5010");

        assert_eq!(parsed, Ok(rule("fd00::1", Protocol::Udp, 5000, 5010)));
    }

    #[test]
    fn bracketed_ipv6_is_parsed() {
        let parsed = parse_allow_rule("[fd00::/64]:tcp:22");

        assert_eq!(parsed, Ok(rule("fd00::/64", Protocol::Tcp, 22, 0)));
    }

    #[test]
    fn protocol_without_port_and_single_port_range_are_accepted() {
        assert_eq!(
            parse_allow_rule("10.0.0.0/8:icmp"),
            Ok(rule("10.0.0.0/8", Protocol::Icmp, 0, 0))
        );
        assert_eq!(
            parse_allow_rule("10.0.0.1:tcp:80-80"),
            Ok(rule("10.0.0.1", Protocol::Tcp, 80, 0))
        );
    }

    #[test]
    fn malformed_rules_say_what_is_wrong() {
        let cases = [
            (
                "10.0.0.300",
                AllowSpecError::InvalidAddress {
                    text: "10.0.0.300".into(),
                },
            ),
            (
                "10.0.0.1:443",
                AllowSpecError::InvalidProtocol { text: "443".into() },
            ),
            (
                "10.0.0.1:sctp:9",
                AllowSpecError::InvalidProtocol {
                    text: "sctp".into(),
                },
            ),
            (
                "10.0.0.1:tcp:0",
                AllowSpecError::InvalidPort { text: "0".into() },
            ),
            (
                "10.0.0.1:tcp:70000",
                AllowSpecError::InvalidPort {
                    text: "70000".into(),
                },
            ),
            (
                "10.0.0.1:tcp:9-1",
                AllowSpecError::ReversedRange { first: 9, last: 1 },
            ),
            (
                "10.0.0.1:icmp:8",
                AllowSpecError::PortOnIcmp { text: "8".into() },
            ),
            (
                "[fd00::1]x",
                AllowSpecError::InvalidAddress {
                    text: "[fd00::1]x".into(),
                },
            ),
        ];
        for (spec, error) in cases {
            assert_eq!(parse_allow_rule(spec), Err(error), "{spec}");
        }
    }

    #[test]
    fn formatted_rules_parse_back_to_the_same_rule() {
        for spec in [
            "10.0.0.10/32:tcp:443",
            "fd00::/64",
            "fd00::1:udp:53-60",
            "10.0.0.1:any:53",
        ] {
            let rule = parse_allow_rule(spec).unwrap();

            assert_eq!(format_allow_rule(&rule), spec);
            assert_eq!(parse_allow_rule(&format_allow_rule(&rule)), Ok(rule));
        }
    }
}

//! Who may order what over the mutual-TLS listener.
//!
//! A client's identity is the first URI subject alternative name of its
//! certificate (`spiffe://cluster/ns/soc/sa/coordinator`), or its first DNS
//! name when it has no URI. The access configuration maps identities to
//! roles; the role a method needs is decided by its gRPC path, so a method
//! added to the API later is `responder`-only until it is listed here.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tonic::{
    codegen::http,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
    Status,
};
use tracing::info;
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::{
    audit::{AuditLog, Entry},
    reload::Watched,
};

/// The longest identity the configuration accepts, in bytes.
const MAX_IDENTITY: usize = 512;

/// What a caller may do; each role may do everything the ones before it
/// may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only methods: info, pods, isolations, health.
    Reader,
    /// A reader that may also isolate and release.
    Isolator,
    /// Every method, including freeze, kill and terminate.
    Responder,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reader => "reader",
            Self::Isolator => "isolator",
            Self::Responder => "responder",
        })
    }
}

/// Methods that change nothing.
const READ_METHODS: &[&str] = &[
    "/stockade.v1.Stockade/GetInfo",
    "/stockade.v1.Stockade/ListPods",
    "/stockade.v1.Stockade/ListIsolations",
    "/stockade.v1.Stockade/GetOrder",
    "/stockade.v1.Stockade/ListOrders",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Methods that cut or restore a pod's network, and nothing else.
const ISOLATE_METHODS: &[&str] = &[
    "/stockade.v1.Stockade/Isolate",
    "/stockade.v1.Stockade/Release",
    "/stockade.v1.Stockade/ExtendIsolation",
];

/// The role a gRPC method path needs; anything not listed needs
/// `responder`.
pub fn required_role(path: &str) -> Role {
    if READ_METHODS.contains(&path) {
        Role::Reader
    } else if ISOLATE_METHODS.contains(&path) {
        Role::Isolator
    } else {
        Role::Responder
    }
}

/// Who sent a request, as the service sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A root process of the node, through the Unix socket.
    Local,
    /// A client of the mutual-TLS listener.
    Remote {
        identity: String,
        role: Role,
        peer: Option<SocketAddr>,
    },
}

impl Caller {
    /// The caller of a request: requests from the mutual-TLS listener carry
    /// one put there by [`Authz`]; the Unix socket's carry none.
    pub fn of<T>(req: &tonic::Request<T>) -> Self {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Local)
    }

    /// The name written in the audit log.
    pub fn name(&self) -> String {
        match self {
            Self::Local => "local:root".into(),
            Self::Remote { identity, .. } => identity.clone(),
        }
    }

    pub fn peer(&self) -> Option<String> {
        match self {
            Self::Remote { peer, .. } => peer.map(|p| p.to_string()),
            Self::Local => None,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the access configuration {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the access configuration {} is not valid", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("the access configuration {}: identity {identity:?} {reason}", path.display())]
    Identity {
        path: PathBuf,
        identity: String,
        reason: &'static str,
    },
}

/// The access configuration, a TOML file:
///
/// ```toml
/// [identities]
/// "spiffe://cluster/ns/soc/sa/coordinator" = "responder"
/// "dashboard.soc.svc" = "reader"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    #[serde(default)]
    identities: BTreeMap<String, Role>,
}

impl AccessConfig {
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AccessError> {
        let config: Self = toml::from_str(text).map_err(|source| AccessError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        for identity in config.identities.keys() {
            let bad = |reason| AccessError::Identity {
                path: path.to_path_buf(),
                identity: identity.chars().take(80).collect(),
                reason,
            };
            if identity.trim().is_empty() {
                return Err(bad("is blank"));
            }
            if identity.len() > MAX_IDENTITY {
                return Err(bad("is longer than 512 bytes"));
            }
        }
        Ok(config)
    }

    pub fn role_of(&self, identity: &str) -> Option<Role> {
        self.identities.get(identity).copied()
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed")]
    Unparsable,
    #[error("the client certificate names no URI or DNS subject alternative name")]
    NoName,
}

/// The identity a certificate (DER) names: its first URI SAN, else its
/// first DNS SAN. The subject's common name is never used.
pub fn identity_of(cert: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|_| IdentityError::Unparsable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .ok_or(IdentityError::NoName)?;
    let names = &san.value.general_names;
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|n| match n {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
    };
    uri.or_else(dns)
        .map(str::to_owned)
        .ok_or(IdentityError::NoName)
}

/// A request refused before it reached the service.
#[derive(Debug)]
pub struct Refusal {
    /// The identity, or `unauthenticated`.
    pub caller: String,
    pub status: Status,
}

/// Decides whether the holder of `certs` (the client's chain, as verified
/// by the TLS handshake) may call `path`.
pub fn authorize(
    access: &AccessConfig,
    certs: Option<&[CertificateDer<'static>]>,
    path: &str,
    peer: Option<SocketAddr>,
) -> Result<Caller, Refusal> {
    let unauthenticated = |why: String| Refusal {
        caller: "unauthenticated".into(),
        status: Status::unauthenticated(why),
    };
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or_else(|| unauthenticated("no client certificate".into()))?;
    let identity = identity_of(leaf).map_err(|e| unauthenticated(e.to_string()))?;
    let Some(role) = access.role_of(&identity) else {
        return Err(Refusal {
            status: Status::unauthenticated(format!(
                "identity {identity} is not in the access configuration"
            )),
            caller: identity,
        });
    };

    let needed = required_role(path);
    if role < needed {
        return Err(Refusal {
            status: Status::permission_denied(format!(
                "{identity} has role {role}; {path} needs {needed}"
            )),
            caller: identity,
        });
    }
    Ok(Caller::Remote {
        identity,
        role,
        peer,
    })
}

/// The tower layer that puts [`Authz`] in front of the TCP server's
/// routes.
#[derive(Clone)]
pub struct AuthzLayer {
    access: Arc<Watched<AccessConfig>>,
    audit: Arc<AuditLog>,
}

impl AuthzLayer {
    pub fn new(access: Arc<Watched<AccessConfig>>, audit: Arc<AuditLog>) -> Self {
        Self { access, audit }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            layer: self.clone(),
        }
    }
}

/// Refuses requests whose certificate's identity is unknown or lacks the
/// method's role, auditing each refusal, and hands the others on with
/// their [`Caller`] in the request's extensions.
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    layer: AuthzLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.layer.admit(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                // The clone is ready only once polled: call the one that was.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { ready.call(req).await })
            }
            Err(refused) => {
                let response = refused.status.into_http::<R>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

impl AuthzLayer {
    fn admit<B>(&self, req: &http::Request<B>) -> Result<Caller, Refusal> {
        let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let certs = tls.and_then(TlsConnectInfo::peer_certs);
        let peer = tls.and_then(|t| t.get_ref().remote_addr());
        let path = req.uri().path();

        let access = self.access.current();
        let refused = match authorize(&access, certs.as_deref().map(Vec::as_slice), path, peer) {
            Ok(caller) => return Ok(caller),
            Err(refused) => refused,
        };
        info!(
            caller = %refused.caller,
            peer = ?peer,
            grpc.method = path,
            reason = refused.status.message(),
            "request refused"
        );
        let mut entry = Entry::new(refused.caller.clone(), path);
        entry.peer = peer.map(|p| p.to_string());
        self.audit
            .write(&entry.with_result(false, Some(&refused.status)));
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AccessConfig {
        let text = r#"
            [identities]
            "spiffe://test/reader" = "reader"
            "spiffe://test/isolator" = "isolator"
            "responder.test" = "responder"
        "#;
        AccessConfig::parse(text, Path::new("access.toml")).unwrap()
    }

    #[test]
    fn roles_are_ordered_from_reader_to_responder() {
        assert!(Role::Reader < Role::Isolator && Role::Isolator < Role::Responder);
    }

    #[test]
    fn methods_need_the_role_their_path_says() {
        let m = |name: &str| format!("/stockade.v1.Stockade/{name}");
        assert_eq!(required_role(&m("GetInfo")), Role::Reader);
        assert_eq!(required_role(&m("ListIsolations")), Role::Reader);
        assert_eq!(required_role(&m("Isolate")), Role::Isolator);
        assert_eq!(required_role(&m("Release")), Role::Isolator);
        assert_eq!(required_role(&m("GetOrder")), Role::Reader);
        assert_eq!(required_role(&m("ListOrders")), Role::Reader);
        assert_eq!(required_role(&m("ExtendIsolation")), Role::Isolator);
        for name in [
            "Freeze",
            "Kill",
            "Terminate",
            "AMethodAddedLater",
            "getinfo",
        ] {
            assert_eq!(required_role(&m(name)), Role::Responder, "{name}");
        }
        assert_eq!(required_role("/other.Service/GetInfo"), Role::Responder);
    }

    #[test]
    fn the_configuration_maps_identities_to_roles() {
        let config = config();
        assert_eq!(config.role_of("spiffe://test/reader"), Some(Role::Reader));
        assert_eq!(config.role_of("responder.test"), Some(Role::Responder));
        assert_eq!(config.role_of("spiffe://test/unknown"), None);
        assert_eq!(config.len(), 3);
    }

    #[test]
    fn a_bad_configuration_is_refused_naming_what_is_wrong() {
        let parse = |text: &str| AccessConfig::parse(text, Path::new("a.toml")).unwrap_err();
        let unknown_role = parse("[identities]\n\"x\" = \"admin\"\n");
        assert!(matches!(unknown_role, AccessError::Parse { .. }));
        let typo = parse("[identitees]\n\"x\" = \"reader\"\n");
        assert!(matches!(typo, AccessError::Parse { .. }));
        let blank = parse("[identities]\n\" \" = \"reader\"\n");
        assert_eq!(
            blank.to_string(),
            "the access configuration a.toml: identity \" \" is blank"
        );
        let long = parse(&format!(
            "[identities]\n\"{}\" = \"reader\"\n",
            "x".repeat(600)
        ));
        assert!(long.to_string().contains("longer than 512 bytes"));
    }

    #[test]
    fn without_a_certificate_the_caller_is_unauthenticated() {
        let refused = authorize(&config(), None, "/stockade.v1.Stockade/GetInfo", None);
        let refused = refused.unwrap_err();
        assert_eq!(refused.status.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.caller, "unauthenticated");
        let empty: &[CertificateDer<'static>] = &[];
        let refused = authorize(&config(), Some(empty), "/x", None).unwrap_err();
        assert_eq!(refused.status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_certificate_that_cannot_be_parsed_is_unauthenticated() {
        let junk = [CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03])];
        let refused = authorize(&config(), Some(&junk), "/x", None).unwrap_err();
        assert_eq!(refused.status.code(), tonic::Code::Unauthenticated);
        assert_eq!(identity_of(&[1, 2, 3]), Err(IdentityError::Unparsable));
    }
}

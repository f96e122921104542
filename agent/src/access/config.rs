//! The daemon's flags for the listener, the audit log and the guards.
//! Every flag also has an environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::{
    audit::{AuditError, AuditLog},
    guards::GuardConfig,
    tls::TlsFiles,
};

#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// Address of the mutual-TLS listener for coordinators (0.0.0.0:7443);
    /// without it the agent listens on no TCP port at all.
    #[arg(
        long,
        env = "STOCKADE_LISTEN",
        requires_all = ["tls_cert", "tls_key", "client_ca", "access_config"]
    )]
    pub listen: Option<SocketAddr>,

    /// The agent's certificate chain (PEM), reloaded when it changes.
    #[arg(long, env = "STOCKADE_TLS_CERT", requires = "listen")]
    pub tls_cert: Option<PathBuf>,

    /// The agent's private key (PEM), reloaded when it changes.
    #[arg(long, env = "STOCKADE_TLS_KEY", requires = "listen")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificates (PEM) that sign coordinators' certificates.
    #[arg(long, env = "STOCKADE_CLIENT_CA", requires = "listen")]
    pub client_ca: Option<PathBuf>,

    /// TOML file mapping client identities to roles (reader, isolator,
    /// responder), reloaded when it changes.
    #[arg(long, env = "STOCKADE_ACCESS_CONFIG", requires = "listen")]
    pub access_config: Option<PathBuf>,

    /// How often the TLS files and the access configuration are checked
    /// for changes, in seconds.
    #[arg(
        long,
        env = "STOCKADE_TLS_RELOAD_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub tls_reload_secs: u64,

    /// File the audit log is appended to; standard error when unset.
    #[arg(long, env = "STOCKADE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// Namespaces whose pods are never contained, comma-separated; the
    /// agent's own namespace is always added.
    #[arg(
        long,
        env = "STOCKADE_PROTECTED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub protected_namespaces: Vec<String>,

    /// The agent's own namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "stockade-system")]
    pub pod_namespace: String,

    /// The agent's own pod UID (downward API); that pod is never contained.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,

    /// Mutating orders admitted in any 60 s, from any caller; 0 means no
    /// limit.
    #[arg(long, env = "STOCKADE_MAX_ORDERS_PER_MINUTE", default_value_t = 60)]
    pub max_orders_per_minute: u32,

    /// Share of the node's pods that may be contained at once, in
    /// percent; one pod always may be. 100 means no limit.
    #[arg(
        long,
        env = "STOCKADE_MAX_CONTAINED_PERCENT",
        default_value_t = 50,
        value_parser = clap::value_parser!(u8).range(1..=100)
    )]
    pub max_contained_percent: u8,

    /// Orders from the node-local Unix socket (root) are not subject to
    /// the two limits above.
    #[arg(long, env = "STOCKADE_LIMITS_EXEMPT_LOCAL")]
    pub limits_exempt_local: bool,

    /// Refuse to contain a pod whose namespace neither the runtime nor the
    /// API server names, so that protected namespaces are always checked.
    #[arg(long, env = "STOCKADE_REQUIRE_POD_NAMESPACE")]
    pub require_pod_namespace: bool,
}

/// What the mutual-TLS listener is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub files: TlsFiles,
    pub access_file: PathBuf,
    pub reload_every: Duration,
}

impl AccessArgs {
    /// The listener, when `--listen` is set (clap has made sure the files
    /// are set too).
    pub fn listener(&self) -> Option<ListenerConfig> {
        let files = TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.client_ca.clone()?,
        };
        Some(ListenerConfig {
            addr: self.listen?,
            files,
            access_file: self.access_config.clone()?,
            reload_every: Duration::from_secs(self.tls_reload_secs),
        })
    }

    /// The guards; `own_cgroup` is the agent's cgroup2 path.
    pub fn guards(&self, own_cgroup: String) -> GuardConfig {
        let mut protected: Vec<String> = self
            .protected_namespaces
            .iter()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .collect();
        protected.push(self.pod_namespace.clone());
        protected.sort();
        protected.dedup();
        GuardConfig {
            protected_namespaces: protected,
            own_pod_uid: self.pod_uid.clone().filter(|uid| !uid.is_empty()),
            own_cgroup,
            max_orders_per_minute: self.max_orders_per_minute,
            max_contained_percent: self.max_contained_percent,
            exempt_local: self.limits_exempt_local,
            require_namespace: self.require_pod_namespace,
        }
    }

    pub fn audit(&self) -> Result<AuditLog, AuditError> {
        match &self.audit_log {
            Some(path) => AuditLog::open(path),
            None => Ok(AuditLog::stderr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Daemon {
        #[command(flatten)]
        access: AccessArgs,
    }

    #[test]
    fn without_listen_there_is_no_listener_and_the_guards_are_safe() {
        let daemon = Daemon::try_parse_from(["agent"]).unwrap();
        assert_eq!(daemon.access.listener(), None);
        let guards = daemon.access.guards("/agent".into());
        assert_eq!(
            guards.protected_namespaces,
            ["kube-system", "stockade-system"]
        );
        assert_eq!(guards.max_orders_per_minute, 60);
        assert_eq!(guards.max_contained_percent, 50);
    }

    #[test]
    fn listen_needs_every_tls_file_and_the_files_need_listen() {
        let partial = ["agent", "--listen", "127.0.0.1:7443", "--tls-cert", "c.pem"];
        assert!(Daemon::try_parse_from(partial).is_err());
        assert!(Daemon::try_parse_from(["agent", "--tls-cert", "c.pem"]).is_err());
        let full = [
            "agent",
            "--listen",
            "127.0.0.1:7443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
            "--access-config",
            "access.toml",
        ];
        let daemon = Daemon::try_parse_from(full).unwrap();
        let listener = daemon.access.listener().unwrap();
        assert_eq!(listener.files.client_ca, PathBuf::from("ca.pem"));
        assert_eq!(listener.reload_every, Duration::from_secs(5));
    }

    #[test]
    fn the_own_namespace_is_always_protected() {
        let args = [
            "agent",
            "--protected-namespaces",
            "kube-system, istio-system",
            "--pod-namespace",
            "security",
        ];
        let daemon = Daemon::try_parse_from(args).unwrap();
        let guards = daemon.access.guards(String::new());
        assert_eq!(
            guards.protected_namespaces,
            ["istio-system", "kube-system", "security"]
        );
        assert!(Daemon::try_parse_from(["agent", "--max-contained-percent", "0"]).is_err());
    }
}

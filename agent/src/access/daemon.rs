//! Starting and stopping the access pieces in the daemon, so that `main`
//! only wires them in.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::{sync::oneshot, task::JoinHandle};
use tonic::service::Routes;
use tracing::{info, warn};

use super::{
    audit::{AuditError, AuditLog},
    config::AccessArgs,
    guards::Guards,
    stockade_server,
    tls::{Remote, RemoteError},
    Gate,
};
use crate::{agent::error_chain, api::Service, cgroup::Cgroup2, k8s};

/// The guards and the audit log the flags ask for, with the pod index and
/// reporter of `kube`.
pub fn gate(args: &AccessArgs, kube: k8s::Links) -> Result<Arc<Gate>, AuditError> {
    let audit = Arc::new(args.audit()?);
    // `/proc/self/cgroup` is read whatever the mount point.
    let own_cgroup = Cgroup2::at(PathBuf::from("/"))
        .own_cgroup()
        .inspect_err(|e| warn!(error = %error_chain(e), "cannot read the agent's own cgroup"))
        .unwrap_or_default();
    let config = args.guards(own_cgroup);
    info!(
        audit = %audit.describe(),
        guards.protected_namespaces = ?config.protected_namespaces,
        guards.own_pod = ?config.own_pod_uid,
        guards.max_orders_per_minute = config.max_orders_per_minute,
        guards.max_contained_percent = config.max_contained_percent,
        "guards and audit log ready"
    );
    let gate = Gate::new(Guards::new(config), audit).with_kube(kube);
    Ok(Arc::new(gate))
}

/// Binds the mutual-TLS listener when `--listen` is set.
pub async fn bind_remote(
    args: &AccessArgs,
    audit: Arc<AuditLog>,
) -> Result<Option<Remote>, RemoteError> {
    let Some(listener) = args.listener() else {
        info!("no --listen: serving the local socket only");
        return Ok(None);
    };
    let remote = Remote::bind(
        listener.addr,
        listener.files,
        listener.access_file,
        audit,
        listener.reload_every,
    )
    .await?;
    Ok(Some(remote))
}

/// The listener's server, running.
pub struct RemoteTask {
    pub addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Serves `service` on the listener, in its own task.
pub fn spawn(remote: Remote, service: Service) -> RemoteTask {
    let addr = remote.local_addr().ok();
    info!(
        listen = ?addr,
        identities = remote.access.current().len(),
        "serving coordinators over mutual TLS"
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let routes = Routes::new(stockade_server(service));
    let task = tokio::spawn(remote.serve(routes, async {
        let _ = stopped.await;
    }));
    RemoteTask { addr, stop, task }
}

impl RemoteTask {
    /// Stops taking connections and drains the open ones.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %error_chain(&e), "the mutual-TLS server failed"),
            Err(e) => warn!(error = %e, "the mutual-TLS server panicked"),
        }
    }
}

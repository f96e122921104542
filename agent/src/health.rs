//! gRPC health checking (`grpc.health.v1`), for the kubelet's probes.
//!
//! The reporter is made only once the programs are loaded and the pinned
//! state reconciled, so SERVING means ready. A watchdog then checks that
//! the agent can still take its locks and read the kernel; when that
//! stalls, the overall status turns NOT_SERVING and liveness fails.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tonic_health::{server::HealthReporter, ServingStatus};
use tracing::warn;

use crate::agent::Agent;

/// How often the watchdog checks the agent.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(5);
/// How long one check may take before the agent counts as stuck.
const WATCHDOG_DEADLINE: Duration = Duration::from_secs(2);

/// Runs forever: marks the agent NOT_SERVING while a check stalls or fails.
pub async fn watchdog(agent: Arc<Agent>, reporter: HealthReporter) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(WATCHDOG_PERIOD).await;
        let probe = agent.clone();
        let check = tokio::task::spawn_blocking(move || probe.isolations().is_ok());
        let ok = matches!(
            tokio::time::timeout(WATCHDOG_DEADLINE, check).await,
            Ok(Ok(true))
        );
        if ok != healthy {
            healthy = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if !ok {
                warn!(deadline = ?WATCHDOG_DEADLINE, "the agent did not answer its own check");
            }
            reporter.set_service_status("", status).await;
        }
    }
}

/// Serves only the health service, in plain text, on `addr` (the probe
/// port), until `stop` resolves.
pub async fn serve(
    addr: SocketAddr,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_shutdown(addr, stop)
        .await
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    use super::*;

    async fn status(port: u16) -> i32 {
        let url = format!("http://127.0.0.1:{port}");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let req = HealthCheckRequest {
            service: String::new(),
        };
        client.check(req).await.unwrap().into_inner().status
    }

    #[tokio::test]
    async fn the_probe_port_reports_what_the_reporter_says() {
        let (reporter, service) = tonic_health::server::health_reporter();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(addr, service, async {
            let _ = stop_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;

        assert_eq!(status(addr.port()).await, ServingStatus::Serving as i32);
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        assert_eq!(status(addr.port()).await, ServingStatus::NotServing as i32);

        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    }
}

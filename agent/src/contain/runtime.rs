//! Telling the container runtime about a kill (CRI `StopContainer`, grace
//! period 0), so that it records the containers as stopped.
//!
//! The runtime is told, never waited on: the kill goes through the cgroup
//! whatever the runtime does, each call has a deadline, and the calls run
//! concurrently on their own tasks, so a hung runtime (C10) costs one
//! deadline in the reply and holds up no other order.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use crate::cri::{CriClient, CriError};

/// A container to stop, with its name when the runtime told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopTarget {
    pub id: String,
    pub name: String,
}

/// How to reach the runtime.
#[derive(Clone, Debug)]
pub enum RuntimeLink {
    /// A connection made at start.
    Connected(CriClient),
    /// A socket that was configured but did not answer at start: tried
    /// again, with the deadline, for each kill.
    Socket(PathBuf),
}

/// What the runtime answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stopped,
    Refused(String),
    NoAnswer(Duration),
    Unreachable(String),
}

/// One container's `StopContainer`, answered or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeStop {
    pub target: StopTarget,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// The outcome a CRI call's result stands for.
pub fn outcome_of(result: Result<(), CriError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Stopped,
        Err(CriError::DeadlineExceeded { after, .. }) => Outcome::NoAnswer(after),
        Err(CriError::Connect { socket, source }) => Outcome::Unreachable(format!(
            "cannot connect to {}: {}",
            socket.display(),
            distinct_causes(&source)
        )),
        Err(err @ CriError::Call { .. }) => Outcome::Refused(err.to_string()),
    }
}

/// An error and its causes as one line, each cause once: the transport
/// errors of tonic and hyper repeat the same I/O error at two levels.
fn distinct_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Starts one `StopContainer` per target at once; the returned task ends
/// when every call has answered or reached its deadline.
pub fn spawn_stops(
    link: RuntimeLink,
    targets: Vec<StopTarget>,
    deadline: Duration,
) -> tokio::task::JoinHandle<Vec<RuntimeStop>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let client = match link {
            RuntimeLink::Connected(client) => client,
            RuntimeLink::Socket(socket) => match CriClient::connect(&socket, deadline).await {
                Ok(client) => client,
                Err(err) => return unreachable_all(targets, outcome_of(Err(err)), started),
            },
        };
        stop_each(client, targets, started).await
    })
}

async fn stop_each(
    client: CriClient,
    targets: Vec<StopTarget>,
    started: Instant,
) -> Vec<RuntimeStop> {
    let mut calls = JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        let client = client.clone();
        calls.spawn(async move {
            let outcome = outcome_of(client.stop_container(&target.id, 0).await);
            let stop = RuntimeStop {
                target,
                outcome,
                elapsed: started.elapsed(),
            };
            (index, stop)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok(stop) = joined {
            done.push(stop);
        }
    }
    done.sort_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, stop)| stop).collect()
}

fn unreachable_all(
    targets: Vec<StopTarget>,
    outcome: Outcome,
    started: Instant,
) -> Vec<RuntimeStop> {
    let elapsed = started.elapsed();
    targets
        .into_iter()
        .map(|target| RuntimeStop {
            target,
            outcome: outcome.clone(),
            elapsed,
        })
        .collect()
}

/// "ok", "error: …", "did not answer within 2s", "unreachable: …".
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Stopped => "ok".into(),
        Outcome::Refused(why) => format!("error: {why}"),
        Outcome::NoAnswer(after) => format!("did not answer within {after:?}"),
        Outcome::Unreachable(why) => format!("unreachable: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cri_result_has_its_outcome() {
        assert_eq!(outcome_of(Ok(())), Outcome::Stopped);
        let late = CriError::DeadlineExceeded {
            rpc: "StopContainer",
            after: Duration::from_secs(2),
        };
        assert_eq!(
            outcome_of(Err(late)),
            Outcome::NoAnswer(Duration::from_secs(2))
        );
        let refused = CriError::Call {
            rpc: "StopContainer",
            status: Box::new(tonic::Status::not_found("no such container")),
        };
        match outcome_of(Err(refused)) {
            Outcome::Refused(why) => assert!(why.contains("no such container"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repeated_causes_are_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let text = distinct_causes(&Outer(io));
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    }

    #[test]
    fn outcomes_read_as_the_reply_says_them() {
        assert_eq!(describe(&Outcome::Stopped), "ok");
        let late = describe(&Outcome::NoAnswer(Duration::from_millis(1500)));
        assert_eq!(late, "did not answer within 1.5s");
    }

    #[tokio::test]
    async fn a_runtime_socket_that_is_not_there_is_reported_unreachable_for_each_container() {
        let dir = tempfile::tempdir().unwrap();
        let link = RuntimeLink::Socket(dir.path().join("none.sock"));
        let targets = vec![
            StopTarget {
                id: "a".into(),
                name: "app".into(),
            },
            StopTarget {
                id: "b".into(),
                name: String::new(),
            },
        ];

        let stops = spawn_stops(link, targets, Duration::from_millis(300))
            .await
            .unwrap();

        assert_eq!(stops.len(), 2);
        assert_eq!(stops[0].target.id, "a");
        for stop in &stops {
            assert!(matches!(&stop.outcome, Outcome::Unreachable(w) if w.contains("none.sock")));
        }
    }
}

//! Building the replies of containment orders from what was verified.

use std::time::SystemTime;

use stockade_proto::v1;

use super::{
    events::CgroupEvents,
    kill::{KillMethod, Killed},
    kube::Deleted,
    runtime::{describe, Outcome, RuntimeStop},
};

pub fn events(e: &CgroupEvents) -> v1::CgroupEvents {
    v1::CgroupEvents {
        populated: e.populated,
        frozen: e.frozen,
        present: e.present,
    }
}

pub fn method(m: KillMethod) -> v1::KillMethod {
    match m {
        KillMethod::CgroupKill => v1::KillMethod::CgroupKill,
        KillMethod::FreezeSignal => v1::KillMethod::FreezeSignal,
    }
}

pub fn runtime_stop(stop: &RuntimeStop) -> v1::RuntimeStop {
    let outcome = match stop.outcome {
        Outcome::Stopped => v1::RuntimeOutcome::Ok,
        Outcome::Refused(_) => v1::RuntimeOutcome::Error,
        Outcome::NoAnswer(_) => v1::RuntimeOutcome::NoAnswer,
        Outcome::Unreachable(_) => v1::RuntimeOutcome::Unreachable,
    };
    v1::RuntimeStop {
        container_id: stop.target.id.clone(),
        container_name: stop.target.name.clone(),
        outcome: outcome as i32,
        detail: describe(&stop.outcome),
        elapsed_ms: u32::try_from(stop.elapsed.as_millis()).unwrap_or(u32::MAX),
    }
}

/// The kill's reply: which cgroup, how, what the kernel said, and what the
/// runtime answered.
pub struct KillFacts<'a> {
    pub pod: v1::Pod,
    pub cgroup_path: &'a str,
    pub cgroup_id: u64,
    pub killed: &'a Killed,
    pub received_at: SystemTime,
    pub runtime: &'a [RuntimeStop],
}

pub fn kill(facts: KillFacts<'_>) -> v1::KillResponse {
    v1::KillResponse {
        pod: Some(facts.pod),
        cgroup_path: facts.cgroup_path.to_owned(),
        cgroup_id: facts.cgroup_id,
        method: method(facts.killed.method) as i32,
        signalled: facts.killed.signalled,
        events: Some(events(&facts.killed.events)),
        received_at: Some(facts.received_at.into()),
        verified_at: Some(facts.killed.verified_at.into()),
        runtime: facts.runtime.iter().map(runtime_stop).collect(),
        order_id: String::new(),
        dry_run: false,
    }
}

/// The outcome of the API delete and its explanation.
pub fn deleted(d: &Deleted) -> (v1::DeleteOutcome, String) {
    match d {
        Deleted::Accepted => (v1::DeleteOutcome::Deleted, String::new()),
        Deleted::AlreadyGone => (
            v1::DeleteOutcome::AlreadyGone,
            "the API server no longer has the pod".into(),
        ),
        Deleted::NotConfigured(why) => (v1::DeleteOutcome::NotConfigured, why.clone()),
        Deleted::Failed(why) => (v1::DeleteOutcome::Failed, why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::contain::runtime::StopTarget;

    fn killed() -> Killed {
        Killed {
            method: KillMethod::FreezeSignal,
            signalled: 3,
            events: CgroupEvents::GONE,
            verified_at: SystemTime::UNIX_EPOCH + Duration::from_secs(20),
        }
    }

    #[test]
    fn a_kill_reply_states_the_kernels_word_and_the_runtimes() {
        let stops = [RuntimeStop {
            target: StopTarget {
                id: "c1".into(),
                name: "app".into(),
            },
            outcome: Outcome::NoAnswer(Duration::from_secs(2)),
            elapsed: Duration::from_millis(2001),
        }];
        let killed = killed();

        let reply = kill(KillFacts {
            pod: v1::Pod::default(),
            cgroup_path: "/kubepods/pod1",
            cgroup_id: 42,
            killed: &killed,
            received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(19),
            runtime: &stops,
        });

        assert_eq!(reply.method, v1::KillMethod::FreezeSignal as i32);
        assert_eq!(reply.signalled, 3);
        let events = reply.events.unwrap();
        assert!(!events.populated && !events.present);
        assert_eq!(reply.verified_at.unwrap().seconds, 20);
        assert_eq!(
            reply.runtime[0].outcome,
            v1::RuntimeOutcome::NoAnswer as i32
        );
        assert_eq!(reply.runtime[0].detail, "did not answer within 2s");
        assert_eq!(reply.runtime[0].elapsed_ms, 2001);
    }

    #[test]
    fn each_delete_outcome_keeps_its_reason() {
        let (outcome, why) = deleted(&Deleted::Failed("refused".into()));
        assert_eq!(
            (outcome, why.as_str()),
            (v1::DeleteOutcome::Failed, "refused")
        );
        assert_eq!(deleted(&Deleted::Accepted).0, v1::DeleteOutcome::Deleted);
    }
}

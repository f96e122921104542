//! Guards: refusals that no caller's role can override, so that a wrong
//! or stolen order cannot take down the node's own machinery or most of
//! its pods at once.
//!
//! - pods of protected namespaces (`kube-system` and the agent's own) are
//!   never contained; a pod whose namespace neither the runtime nor the
//!   API server's pod index names is contained unless `require_namespace`
//!   is set (off by default, so that a node whose runtime and API server
//!   are both down can still answer an incident);
//! - the agent's own pod, and any cgroup that contains the agent, neither;
//! - at most `max_orders_per_minute` mutating orders are admitted in any
//!   60 seconds;
//! - at most `max_contained_percent` of the node's pods are contained at
//!   once, though one pod always may be.
//!
//! The two limits bind local root (the Unix socket) too, by default, except
//! for orders that lift a containment (release, thaw, uncontain): a
//! script looping on the node's CLI is as able to take the node down as a
//! runaway coordinator. `exempt_local` lifts them for the Unix socket on
//! nodes whose operators want that; root could stop the agent anyway.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::cgroup;

/// The window of the rate limit.
const WINDOW: Duration = Duration::from_secs(60);

/// The agent's namespace when `POD_NAMESPACE` is not set.
pub const DEFAULT_OWN_NAMESPACE: &str = "stockade-system";

/// The guards' settings; [`GuardConfig::default`] is the safe default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// Namespaces whose pods are never contained.
    pub protected_namespaces: Vec<String>,
    /// The agent's own pod (`metadata.uid`), when known.
    pub own_pod_uid: Option<String>,
    /// The agent's own cgroup2 path; no target may contain it.
    pub own_cgroup: String,
    /// Mutating orders admitted per 60 s; 0 turns the limit off.
    pub max_orders_per_minute: u32,
    /// Share of the node's pods contained at once, 1-100; 100 turns the
    /// limit off.
    pub max_contained_percent: u8,
    /// The two limits do not apply to orders from the Unix socket.
    pub exempt_local: bool,
    /// Refuse to contain a pod whose namespace is unknown.
    pub require_namespace: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            protected_namespaces: vec!["kube-system".into(), DEFAULT_OWN_NAMESPACE.into()],
            own_pod_uid: None,
            own_cgroup: String::new(),
            max_orders_per_minute: 60,
            max_contained_percent: 50,
            exempt_local: false,
            require_namespace: false,
        }
    }
}

/// What an order does to its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Isolate, freeze, kill, terminate, contain.
    Contain,
    /// Release, thaw, uncontain: only the rate limit applies.
    Lift,
}

/// What the guards need to know about one order.
#[derive(Clone, Debug)]
pub struct GuardInput<'a> {
    pub effect: Effect,
    /// Sent over the root-only Unix socket: the limits apply only if
    /// `exempt_local` is off.
    pub local: bool,
    /// A dry run is checked like an order but not counted.
    pub dry_run: bool,
    /// The pod's namespace; `None` when the runtime did not name it.
    pub namespace: Option<&'a str>,
    pub pod_uid: &'a str,
    /// The pod's cgroup2 path; empty when the pod is gone (releases).
    pub cgroup_path: &'a str,
    /// Every pod on the node.
    pub pods_on_node: usize,
    /// Pods contained now, the target included if it is.
    pub contained: usize,
    pub target_contained: bool,
}

/// Why the guards refused an order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardRefusal {
    #[error("namespace {namespace} is protected: its pods are never contained")]
    ProtectedNamespace { namespace: String },
    #[error(
        "pod {uid}: its namespace is unknown (no runtime socket or API server named it), \
         and the agent is set to contain only pods whose namespace it can check"
    )]
    UnknownNamespace { uid: String },
    #[error("pod {uid} is the agent's own pod")]
    OwnPod { uid: String },
    #[error("refusing cgroup {path}: {reason}")]
    OwnCgroup { path: String, reason: String },
    #[error(
        "rate limit: {limit} mutating orders in the last 60 s already; \
         try again in {retry_after_secs} s"
    )]
    RateLimited { limit: u32, retry_after_secs: u64 },
    #[error(
        "{after} of the node's {pods} pods would be contained, over the limit of \
         {percent}% ({allowed} pods)"
    )]
    TooManyContained {
        after: usize,
        pods: usize,
        percent: u8,
        allowed: usize,
    },
}

impl GuardRefusal {
    /// The gRPC status: a limit can pass later, the others never will.
    pub fn status(&self) -> tonic::Status {
        match self {
            Self::RateLimited { .. } => tonic::Status::resource_exhausted(self.to_string()),
            _ => tonic::Status::failed_precondition(self.to_string()),
        }
    }
}

/// The guards, with the times of the orders they admitted.
#[derive(Debug, Default)]
pub struct Guards {
    config: GuardConfig,
    admitted: Mutex<VecDeque<Instant>>,
}

impl Guards {
    pub fn new(config: GuardConfig) -> Self {
        Self {
            config,
            admitted: Mutex::new(VecDeque::new()),
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Refuses the order if any guard does; an admitted order (not a dry
    /// run) counts against the rate limit.
    pub fn check(&self, order: &GuardInput) -> Result<(), GuardRefusal> {
        self.check_at(order, Instant::now())
    }

    fn check_at(&self, order: &GuardInput, now: Instant) -> Result<(), GuardRefusal> {
        if order.effect == Effect::Contain {
            self.check_target(order)?;
        }
        // Local root may always undo a containment: a runaway caller that
        // used up the rate limit must not lock the operator out of a thaw.
        let local_lift = order.local && order.effect == Effect::Lift;
        if local_lift || (order.local && self.config.exempt_local) {
            return Ok(());
        }
        if order.effect == Effect::Contain {
            self.check_share(order)?;
        }
        self.check_rate(order.dry_run, now)
    }

    fn check_target(&self, order: &GuardInput) -> Result<(), GuardRefusal> {
        let protected = &self.config.protected_namespaces;
        if let Some(namespace) = order
            .namespace
            .filter(|ns| protected.iter().any(|p| p == ns))
        {
            let namespace = namespace.to_owned();
            return Err(GuardRefusal::ProtectedNamespace { namespace });
        }
        if order.namespace.is_none() && self.config.require_namespace {
            let uid = order.pod_uid.to_owned();
            return Err(GuardRefusal::UnknownNamespace { uid });
        }
        if self.config.own_pod_uid.as_deref() == Some(order.pod_uid) {
            let uid = order.pod_uid.to_owned();
            return Err(GuardRefusal::OwnPod { uid });
        }
        if order.cgroup_path.is_empty() || self.config.own_cgroup.is_empty() {
            return Ok(());
        }
        cgroup::check_target(order.cgroup_path, &self.config.own_cgroup).map_err(|e| {
            GuardRefusal::OwnCgroup {
                path: order.cgroup_path.to_owned(),
                reason: refused_reason(e),
            }
        })
    }

    /// One pod may always be contained, so that a node running a single
    /// pod, or a handful, can still answer an incident.
    fn check_share(&self, order: &GuardInput) -> Result<(), GuardRefusal> {
        let percent = self.config.max_contained_percent.min(100);
        if percent >= 100 || order.target_contained {
            return Ok(());
        }
        let after = order.contained + 1;
        let allowed = (order.pods_on_node * usize::from(percent) / 100).max(1);
        if after <= allowed {
            return Ok(());
        }
        Err(GuardRefusal::TooManyContained {
            after,
            pods: order.pods_on_node,
            percent,
            allowed,
        })
    }

    fn check_rate(&self, dry_run: bool, now: Instant) -> Result<(), GuardRefusal> {
        let limit = self.config.max_orders_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        while admitted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            admitted.pop_front();
        }
        if let Some(oldest) = admitted
            .front()
            .filter(|_| admitted.len() >= limit as usize)
        {
            let wait = WINDOW.saturating_sub(now.duration_since(*oldest));
            return Err(GuardRefusal::RateLimited {
                limit,
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        if !dry_run {
            admitted.push_back(now);
        }
        Ok(())
    }
}

fn refused_reason(err: cgroup::CgroupError) -> String {
    match err {
        cgroup::CgroupError::Refused { reason, .. } => reason,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
    const POD_PATH: &str = "/kubepods/besteffort/podaaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

    fn order() -> GuardInput<'static> {
        GuardInput {
            effect: Effect::Contain,
            local: false,
            dry_run: false,
            namespace: Some("shop"),
            pod_uid: UID,
            cgroup_path: POD_PATH,
            pods_on_node: 10,
            contained: 0,
            target_contained: false,
        }
    }

    fn guards(mut config: GuardConfig) -> Guards {
        if config.own_cgroup.is_empty() {
            config.own_cgroup = "/system.slice/stockade.service".into();
        }
        Guards::new(config)
    }

    #[test]
    fn a_plain_order_passes_every_guard() {
        assert_eq!(guards(GuardConfig::default()).check(&order()), Ok(()));
    }

    #[test]
    fn protected_namespaces_are_refused_by_default() {
        let guards = guards(GuardConfig::default());
        for namespace in ["kube-system", DEFAULT_OWN_NAMESPACE] {
            let refusal = guards
                .check(&GuardInput {
                    namespace: Some(namespace),
                    ..order()
                })
                .unwrap_err();
            assert_eq!(
                refusal.to_string(),
                format!("namespace {namespace} is protected: its pods are never contained")
            );
            assert_eq!(refusal.status().code(), tonic::Code::FailedPrecondition);
        }
    }

    #[test]
    fn protected_namespaces_bind_local_root_too() {
        let refusal = guards(GuardConfig::default()).check(&GuardInput {
            namespace: Some("kube-system"),
            local: true,
            ..order()
        });
        assert!(matches!(
            refusal,
            Err(GuardRefusal::ProtectedNamespace { .. })
        ));
    }

    #[test]
    fn the_agents_own_pod_is_refused() {
        let guards = guards(GuardConfig {
            own_pod_uid: Some(UID.into()),
            ..GuardConfig::default()
        });
        let refusal = guards.check(&order()).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            format!("pod {UID} is the agent's own pod")
        );
    }

    #[test]
    fn a_cgroup_containing_the_agent_is_refused() {
        let guards = guards(GuardConfig {
            own_cgroup: format!("{POD_PATH}/0123"),
            ..GuardConfig::default()
        });
        let refusal = guards.check(&order()).unwrap_err();
        assert!(
            refusal.to_string().contains("contains the agent itself"),
            "{refusal}"
        );
    }

    #[test]
    fn the_rate_limit_refuses_the_order_past_the_limit_then_recovers() {
        let guards = guards(GuardConfig {
            max_orders_per_minute: 2,
            ..GuardConfig::default()
        });
        let start = Instant::now();
        assert_eq!(guards.check_at(&order(), start), Ok(()));
        assert_eq!(
            guards.check_at(&order(), start + Duration::from_secs(10)),
            Ok(())
        );

        let refusal = guards
            .check_at(&order(), start + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(
            refusal,
            GuardRefusal::RateLimited {
                limit: 2,
                retry_after_secs: 40
            }
        );
        assert_eq!(refusal.status().code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            guards.check_at(&order(), start + Duration::from_secs(60)),
            Ok(())
        );
    }

    #[test]
    fn dry_runs_are_checked_but_not_counted() {
        let guards = guards(GuardConfig {
            max_orders_per_minute: 1,
            ..GuardConfig::default()
        });
        let dry = GuardInput {
            dry_run: true,
            ..order()
        };
        for _ in 0..5 {
            assert_eq!(guards.check(&dry), Ok(()));
        }
        assert_eq!(guards.check(&order()), Ok(()));
        assert!(matches!(
            guards.check(&dry),
            Err(GuardRefusal::RateLimited { .. })
        ));
    }

    #[test]
    fn releases_count_against_the_rate_but_not_the_share() {
        let guards = guards(GuardConfig {
            max_orders_per_minute: 1,
            ..GuardConfig::default()
        });
        let release = GuardInput {
            effect: Effect::Lift,
            namespace: Some("kube-system"),
            contained: 10,
            ..order()
        };
        assert_eq!(guards.check(&release), Ok(()));
        assert!(matches!(
            guards.check(&release),
            Err(GuardRefusal::RateLimited { .. })
        ));
    }

    #[test]
    fn the_share_limit_refuses_past_half_the_node() {
        let guards = guards(GuardConfig::default());
        let fifth = GuardInput {
            contained: 4,
            ..order()
        };
        assert_eq!(guards.check(&fifth), Ok(()));
        let sixth = GuardInput {
            contained: 5,
            ..order()
        };
        let refusal = guards.check(&sixth).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "6 of the node's 10 pods would be contained, over the limit of 50% (5 pods)"
        );
        let again = GuardInput {
            target_contained: true,
            ..sixth
        };
        assert_eq!(guards.check(&again), Ok(()));
    }

    #[test]
    fn one_pod_may_always_be_contained() {
        let guards = guards(GuardConfig::default());
        let alone = GuardInput {
            pods_on_node: 1,
            ..order()
        };
        assert_eq!(guards.check(&alone), Ok(()));
        let second = GuardInput {
            pods_on_node: 3,
            contained: 1,
            ..order()
        };
        assert!(matches!(
            guards.check(&second),
            Err(GuardRefusal::TooManyContained { allowed: 1, .. })
        ));
    }

    #[test]
    fn local_root_is_limited_unless_exempted() {
        let local = GuardInput {
            local: true,
            ..order()
        };
        let limited = guards(GuardConfig {
            max_orders_per_minute: 1,
            ..GuardConfig::default()
        });
        assert_eq!(limited.check(&local), Ok(()));
        assert!(matches!(
            limited.check(&local),
            Err(GuardRefusal::RateLimited { limit: 1, .. })
        ));
        // Undoing stays possible for local root at the limit.
        let undo = GuardInput {
            effect: Effect::Lift,
            ..local.clone()
        };
        assert_eq!(limited.check(&undo), Ok(()));
        let remote_undo = GuardInput {
            local: false,
            ..undo.clone()
        };
        assert!(limited.check(&remote_undo).is_err());
        let crowded = GuardInput {
            contained: 9,
            ..local.clone()
        };
        assert!(matches!(
            limited.check(&crowded),
            Err(GuardRefusal::TooManyContained { .. })
        ));

        let exempt = guards(GuardConfig {
            max_orders_per_minute: 1,
            exempt_local: true,
            ..GuardConfig::default()
        });
        for _ in 0..3 {
            assert_eq!(exempt.check(&crowded), Ok(()));
        }
    }

    #[test]
    fn an_unnamed_pod_is_refused_only_when_namespaces_are_required() {
        let unnamed = GuardInput {
            namespace: None,
            ..order()
        };
        assert_eq!(guards(GuardConfig::default()).check(&unnamed), Ok(()));
        let strict = guards(GuardConfig {
            require_namespace: true,
            ..GuardConfig::default()
        });
        assert!(matches!(
            strict.check(&unnamed),
            Err(GuardRefusal::UnknownNamespace { .. })
        ));
        let lift = GuardInput {
            effect: Effect::Lift,
            ..unnamed
        };
        assert_eq!(strict.check(&lift), Ok(()));
    }

    #[test]
    fn zero_and_one_hundred_turn_the_limits_off() {
        let guards = guards(GuardConfig {
            max_orders_per_minute: 0,
            max_contained_percent: 100,
            ..GuardConfig::default()
        });
        let all = GuardInput {
            contained: 9,
            ..order()
        };
        for _ in 0..100 {
            assert_eq!(guards.check(&all), Ok(()));
        }
    }
}

//! The containing orders in flight, so that the share guard counts them
//! before the pod list shows them.
//!
//! The gate checks the share of contained pods against a list of the
//! node's pods taken when the order arrived. Two orders checked at once
//! would each see the other's pod as free, and both pass. So each
//! admitted containing order holds its pod here from the check until some
//! time after it finished, and every check adds the pods held by orders
//! that its pod list may not show: those still in flight, and those that
//! finished after the list was taken. The check and the hold are one step
//! under one lock.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::guards::{GuardInput, GuardRefusal, Guards};

/// How long a finished order's hold is kept for lists taken before it
/// finished; longer than any pod list takes (the runtime's deadline).
const KEEP_FINISHED: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    /// Bumped each time an order finishes.
    generation: u64,
    holds: Vec<Hold>,
}

#[derive(Debug)]
struct Hold {
    id: u64,
    uid: String,
    /// The generation its order finished in, and when.
    finished: Option<(u64, Instant)>,
}

/// The holds of one gate.
#[derive(Debug, Default, Clone)]
pub struct Holds {
    state: Arc<Mutex<State>>,
}

/// A pod held by an order in flight; dropping it marks the order finished.
#[derive(Debug)]
#[must_use = "the hold ends when this is dropped"]
pub struct HoldGuard {
    state: Arc<Mutex<State>>,
    id: u64,
}

impl Holds {
    /// The generation to pass to [`Holds::check`]: read it before taking
    /// the pod list the check is made against.
    pub fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    /// Runs the guards with the pods held by orders the list taken at
    /// `seen` may not show added to `input.contained` (`listed` says
    /// which pods that list already counts), and, for an admitted
    /// containing order that is not a dry run, holds its pod.
    pub fn check(
        &self,
        guards: &Guards,
        mut input: GuardInput<'_>,
        seen: u64,
        listed: &BTreeSet<&str>,
    ) -> Result<Option<HoldGuard>, GuardRefusal> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        state
            .holds
            .retain(|h| h.finished.is_none_or(|(_, at)| now - at < KEEP_FINISHED));
        let unseen: BTreeSet<&str> = state
            .holds
            .iter()
            .filter(|h| h.finished.is_none_or(|(generation, _)| generation > seen))
            .map(|h| h.uid.as_str())
            .filter(|uid| !listed.contains(uid))
            .collect();
        input.target_contained |= unseen.contains(input.pod_uid);
        input.contained += unseen.len();
        guards.check(&input)?;
        if input.dry_run || input.effect != super::guards::Effect::Contain {
            return Ok(None);
        }
        let id = state.holds.iter().map(|h| h.id).max().unwrap_or(0) + 1;
        state.holds.push(Hold {
            id,
            uid: input.pod_uid.to_owned(),
            finished: None,
        });
        Ok(Some(HoldGuard {
            state: Arc::clone(&self.state),
            id,
        }))
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        state.generation += 1;
        let generation = state.generation;
        if let Some(hold) = state.holds.iter_mut().find(|h| h.id == self.id) {
            hold.finished = Some((generation, Instant::now()));
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Each change is one push or one field write: a poisoned lock is
    // still consistent.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::guards::{Effect, GuardConfig};

    fn input(uid: &str) -> GuardInput<'_> {
        GuardInput {
            effect: Effect::Contain,
            local: false,
            dry_run: false,
            namespace: Some("shop"),
            pod_uid: uid,
            cgroup_path: "",
            pods_on_node: 4,
            contained: 0,
            target_contained: false,
        }
    }

    fn guards() -> Guards {
        // 50 % of 4 pods: 2 may be contained.
        Guards::new(GuardConfig::default())
    }

    #[test]
    fn orders_checked_at_once_count_each_other() {
        let (holds, guards) = (Holds::default(), guards());
        let seen = holds.generation();
        let none = BTreeSet::new();
        let a = holds.check(&guards, input("a"), seen, &none).unwrap();
        let b = holds.check(&guards, input("b"), seen, &none).unwrap();
        let c = holds.check(&guards, input("c"), seen, &none);
        assert!(matches!(
            c,
            Err(GuardRefusal::TooManyContained { after: 3, .. })
        ));
        drop((a, b));
    }

    #[test]
    fn a_finished_order_counts_for_lists_taken_before_it_finished() {
        let (holds, guards) = (Holds::default(), guards());
        let none = BTreeSet::new();
        let old_list = holds.generation();
        let a = holds.check(&guards, input("a"), old_list, &none).unwrap();
        let b = holds.check(&guards, input("b"), old_list, &none).unwrap();
        drop((a, b));
        // A list taken before both finished does not show them.
        assert!(holds.check(&guards, input("c"), old_list, &none).is_err());
        // A list taken after shows them itself; the holds are not added.
        let new_list = holds.generation();
        let listed = BTreeSet::from(["a", "b"]);
        let mut fresh = input("c");
        fresh.contained = 2;
        assert!(holds.check(&guards, fresh, new_list, &listed).is_err());
        let mut released = input("c");
        released.contained = 1;
        let ok = holds.check(&guards, released, new_list, &BTreeSet::from(["a"]));
        assert!(ok.is_ok());
    }

    #[test]
    fn the_same_pod_twice_counts_once_and_dry_runs_hold_nothing() {
        let (holds, guards) = (Holds::default(), guards());
        let none = BTreeSet::new();
        let seen = holds.generation();
        let a = holds.check(&guards, input("a"), seen, &none).unwrap();
        let again = holds.check(&guards, input("a"), seen, &none).unwrap();
        let mut dry = input("b");
        dry.dry_run = true;
        assert!(holds.check(&guards, dry, seen, &none).unwrap().is_none());
        assert!(holds.check(&guards, input("b"), seen, &none).is_ok());
        drop((a, again));
    }
}

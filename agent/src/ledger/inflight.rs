//! One order id acted on at a time, within this process.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::watch;

#[cfg(doc)]
use super::Begin;

/// The ids being acted on now; cheap to clone, clones share the set.
///
/// The ledger already makes `begin` atomic, so two concurrent orders with
/// the same id never both get [`Begin::New`]. But the
/// loser would see the winner's record while it is still `Accepted`, with
/// no reply yet. [`InFlight`] makes it wait instead: hold the guard around
/// the whole begin → act → finish sequence, and a concurrent duplicate
/// reaches `begin` only after the first has finished, so it gets the
/// first's stored reply.
///
/// ```no_run
/// # use stockade_agent::ledger::{Begin, InFlight, Ledger, LedgerError, NewOrder};
/// # async fn handle(ledger: &Ledger, in_flight: &InFlight, order: NewOrder)
/// #     -> Result<(), LedgerError> {
/// let _turn = in_flight.acquire(&order.id).await;
/// match ledger.begin(order)? {
///     Begin::New => { /* act, then ledger.finish(..) */ }
///     Begin::Duplicate(first) => { /* answer with first.reply or first.failure */ }
///     Begin::Conflict(_) => { /* refuse: ALREADY_EXISTS */ }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    busy: Arc<Mutex<HashMap<String, watch::Sender<()>>>>,
}

/// The turn of one order id; the id is free again when this is dropped,
/// also when the task holding it is cancelled or panics.
#[derive(Debug)]
#[must_use = "the id is free again as soon as the guard is dropped"]
pub struct InFlightGuard {
    busy: Arc<Mutex<HashMap<String, watch::Sender<()>>>>,
    id: String,
}

impl InFlight {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until no other task holds `id`, then holds it.
    pub async fn acquire(&self, id: &str) -> InFlightGuard {
        loop {
            let mut done = match self.try_hold(id) {
                Ok(guard) => return guard,
                Err(done) => done,
            };
            // Err only means the holder's sender is gone: the id is free.
            let _ = done.changed().await;
        }
    }

    /// Holds `id` if it is free; otherwise a receiver that wakes when the
    /// current holder lets go. Both under one lock, so no wake-up is lost.
    fn try_hold(&self, id: &str) -> Result<InFlightGuard, watch::Receiver<()>> {
        let mut busy = lock(&self.busy);
        if let Some(holder) = busy.get(id) {
            return Err(holder.subscribe());
        }
        let (holder, _) = watch::channel(());
        busy.insert(id.to_owned(), holder);
        Ok(InFlightGuard {
            busy: Arc::clone(&self.busy),
            id: id.to_owned(),
        })
    }

    /// How many ids are held now.
    pub fn len(&self) -> usize {
        lock(&self.busy).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // Dropping the sender closes every waiter's receiver.
        lock(&self.busy).remove(&self.id);
    }
}

fn lock(
    busy: &Mutex<HashMap<String, watch::Sender<()>>>,
) -> MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
    // Every update is one insert or remove, so a poisoned map is consistent.
    busy.lock().unwrap_or_else(|p| p.into_inner())
}

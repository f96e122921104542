use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::ledger::{action, fingerprint, ManualClock};

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn isolate_order(id: &str, at: SystemTime, ttl: u32) -> NewOrder {
    NewOrder {
        id: id.into(),
        action: action::ISOLATE.into(),
        fingerprint: fingerprint(action::ISOLATE, b"pod-a"),
        request: b"pod-a".to_vec(),
        pod_uid: "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee".into(),
        cgroup_id: 42,
        received_at: at,
        expires_at: expiry(at, ttl),
    }
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Orders {
    let clock: Arc<dyn Clock> = clock.clone();
    Orders::new(Ledger::open_with_clock(dir, clock.clone()).unwrap(), clock)
}

#[tokio::test]
async fn an_isolation_expires_after_its_ttl_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let orders = open(dir.path(), &clock);
    let reply = v1::Isolation::default();
    let enforced = orders
        .run(isolate_order("o-1", t0(), 10), async { Ok(reply) })
        .await;
    assert!(enforced.is_ok());
    drop(orders);

    // The agent restarts 5 s later: nothing is due yet.
    clock.advance(Duration::from_secs(5));
    let orders = open(dir.path(), &clock);
    let lifted = AtomicUsize::new(0);
    let lift = |_: &OrderRecord| {
        lifted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    };
    let none = expire_due(orders.ledger(), orders.now(), lift).unwrap();
    assert!(none.is_empty());
    drop(orders);

    // Restarted again after the TTL: lifted once, then never again.
    clock.advance(Duration::from_secs(6));
    let orders = open(dir.path(), &clock);
    let expired = expire_due(orders.ledger(), orders.now(), lift).unwrap();
    assert_eq!(expired, ["o-1"]);
    let again = expire_due(orders.ledger(), orders.now(), lift).unwrap();
    assert!(again.is_empty());
    assert_eq!(lifted.load(Ordering::SeqCst), 1);
    let rec = orders.ledger().get("o-1").unwrap().unwrap();
    assert_eq!(rec.state, OrderState::Expired);
}

#[tokio::test]
async fn a_failed_lift_stays_due_and_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let orders = open(dir.path(), &clock);
    let enforced = orders
        .run(isolate_order("o-2", t0(), 1), async {
            Ok(v1::Isolation::default())
        })
        .await;
    assert!(enforced.is_ok());
    clock.advance(Duration::from_secs(2));

    let refuse = |_: &OrderRecord| Err(AgentError::Kernel("busy".into()));
    assert!(expire_due(orders.ledger(), orders.now(), refuse)
        .unwrap()
        .is_empty());
    let rec = orders.ledger().get("o-2").unwrap().unwrap();
    assert_eq!(rec.state, OrderState::Enforced);

    let ok = |_: &OrderRecord| Ok(());
    assert_eq!(
        expire_due(orders.ledger(), orders.now(), ok).unwrap(),
        ["o-2"]
    );
}

#[tokio::test]
async fn an_isolation_without_ttl_never_expires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let orders = open(dir.path(), &clock);
    let enforced = orders
        .run(isolate_order("o-3", t0(), 0), async {
            Ok(v1::Isolation::default())
        })
        .await;
    assert!(enforced.is_ok());
    clock.advance(Duration::from_secs(10 * 365 * 86_400));

    let fail = |_: &OrderRecord| panic!("nothing is due");
    assert!(expire_due(orders.ledger(), orders.now(), fail)
        .unwrap()
        .is_empty());
}

/// Sends `order` through the same steps as the agent: turn, known, run.
async fn send(
    orders: &Orders,
    order: NewOrder,
    acted: &AtomicUsize,
) -> Result<v1::Isolation, AgentError> {
    let _turn = orders.turn(&order.id).await;
    let known = orders.known(&order.id, &order.action, order.fingerprint);
    if let Some(first) = known.await? {
        return first;
    }
    let act = async {
        let n = acted.fetch_add(1, Ordering::SeqCst);
        // Long enough for the other tasks to pile up behind the turn.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(v1::Isolation {
            reason: format!("attachment set {n}"),
            ..Default::default()
        })
    };
    orders.run(order, act).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_id_sent_by_16_tasks_at_once_acts_once() {
    let dir = tempfile::tempdir().unwrap();
    let orders = Orders::new(
        Ledger::open(dir.path()).unwrap(),
        Arc::new(crate::ledger::SystemClock),
    );
    let acted = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (orders, acted) = (orders.clone(), acted.clone());
        let order = isolate_order("same-id", SystemTime::now(), 0);
        tasks.push(tokio::spawn(
            async move { send(&orders, order, &acted).await },
        ));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap().unwrap());
    }

    assert_eq!(acted.load(Ordering::SeqCst), 1);
    assert!(replies.iter().all(|r| *r == replies[0]), "{replies:?}");
    assert_eq!(replies[0].reason, "attachment set 0");
}

#[tokio::test]
async fn an_id_reused_with_other_content_is_refused_and_a_failure_replays() {
    let dir = tempfile::tempdir().unwrap();
    let orders = Orders::new(
        Ledger::open(dir.path()).unwrap(),
        Arc::new(crate::ledger::SystemClock),
    );
    let first = isolate_order("dup", SystemTime::now(), 0);
    let failed: Result<v1::Isolation, _> = orders
        .run(first.clone(), async {
            Err(AgentError::NotFound("pod x is gone".into()))
        })
        .await;
    assert!(failed.is_err());

    let replayed = orders
        .known::<v1::Isolation>("dup", action::ISOLATE, first.fingerprint)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let status = api::status(replayed);
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "pod x is gone")
    );

    let other = fingerprint(action::ISOLATE, b"pod-b");
    let conflict = orders
        .known::<v1::Isolation>("dup", action::ISOLATE, other)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let status = api::status(conflict);
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status
        .message()
        .contains("order id reused with different content"));
}

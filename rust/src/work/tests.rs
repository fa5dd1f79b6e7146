//! The work source on the memory store and a real SQLite file: recovery, timers within and
//! beyond the horizon, firing, the cap on ready work, and closing.

use std::{sync::atomic::AtomicU64, time::Instant};

use super::*;
use crate::{
    cluster::mailbox::{Address, EntityOptions, Message, Refusal},
    store::{memory::MemoryStore, Timer},
};

const T0: u64 = 1_700_000_000_000;

fn start(id: &str) -> Op {
    Op::Start {
        id: id.into(),
        workflow: "W".into(),
        payload: b"{}".to_vec(),
        parent: None,
    }
}

fn suspend(id: &str) -> Op {
    Op::Status {
        id: id.into(),
        status: Status::Suspended,
        result: None,
    }
}

fn timer(id: &str, name: &str, due_ms: u64) -> Op {
    Op::Timer(Timer {
        execution_id: id.into(),
        name: name.into(),
        due_ms,
    })
}

async fn write(store: &dyn Store, ops: Vec<Op>) -> Vec<OpResult> {
    store.write(ops).unwrap().await.unwrap()
}

fn manual(now: u64) -> Clock {
    Clock::Manual(AtomicU64::new(now))
}

/// Waits (up to 10 s) for the source to have ready work, and takes it all: here, executions
/// to resume.
async fn next(source: &WorkSource) -> Vec<Resume> {
    tokio::time::timeout(Duration::from_secs(10), source.wait())
        .await
        .expect("no work came")
        .unwrap();
    resumes(source.take(usize::MAX))
}

fn resumes(work: Vec<Work>) -> Vec<Resume> {
    work.into_iter()
        .map(|work| match work {
            Work::Resume(resume) => resume,
            other => panic!("not a resume: {other:?}"),
        })
        .collect()
}

/// Waits (up to 10 s) until the source holds nothing.
async fn idle(source: &WorkSource) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while source.busy() {
        assert!(Instant::now() < deadline, "the source stayed busy");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn ids(work: &[Resume]) -> Vec<&str> {
    let mut ids: Vec<&str> = work.iter().map(|w| w.execution_id.as_str()).collect();
    ids.sort_unstable();
    ids
}

/// Three executions, two of them suspended.
async fn three(store: &dyn Store) {
    write(
        store,
        vec![
            start("a"),
            start("b"),
            start("c"),
            suspend("b"),
            suspend("c"),
        ],
    )
    .await;
}

#[tokio::test]
async fn executions_found_running_are_resumed_from_their_snapshots() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    three(store.as_ref()).await;
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    let work = next(&source).await;
    assert_eq!(ids(&work), ["a"]);
    assert_eq!(work[0].fired, None);
    assert_eq!(work[0].snapshot.execution.status, Status::Running);
    idle(&source).await;
    source.close();
}

#[tokio::test]
async fn a_due_timer_fires_in_one_transaction_and_resumes_its_execution() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    three(store.as_ref()).await;
    write(
        store.as_ref(),
        vec![timer("b", "DurableClock/nap", T0 + 5_000)],
    )
    .await;
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    assert_eq!(ids(&next(&source).await), ["a"]);
    idle(&source).await;
    assert_eq!(
        source.timers_in_memory(),
        [("b".to_owned(), "DurableClock/nap".to_owned())]
    );
    assert_eq!(source.next_due(), Some(T0 + 5_000));
    source.advance_to(T0 + 4_999);
    idle(&source).await;
    assert!(source.take(10).is_empty(), "not due yet");
    source.advance_to(T0 + 5_000);
    let work = next(&source).await;
    assert_eq!(ids(&work), ["b"]);
    assert_eq!(work[0].fired.as_deref(), Some("DurableClock/nap"));
    let snapshot = &work[0].snapshot;
    assert_eq!(snapshot.execution.status, Status::Running);
    assert_eq!(snapshot.deferreds.len(), 1);
    assert_eq!(snapshot.deferreds[0].name, "DurableClock/nap");
    assert_eq!(snapshot.deferreds[0].value, VOID);
    let (left, _) = store.timers_between(-1, i64::MAX).await.unwrap();
    assert!(
        left.is_empty(),
        "the fired timer is removed with its firing"
    );
    source.close();
}

#[tokio::test]
async fn timers_beyond_the_horizon_stay_in_the_store_until_they_come_near() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    three(store.as_ref()).await;
    let far = T0 + 3 * HORIZON_MS;
    write(store.as_ref(), vec![timer("c", "DurableClock/later", far)]).await;
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    next(&source).await;
    idle(&source).await;
    assert!(source.timers_in_memory().is_empty());
    // The host wakes the source at the load of the next window, half a horizon early.
    assert_eq!(source.next_due(), Some(far - HORIZON_MS / 2));
    source.advance_to(far - HORIZON_MS / 2 - 1);
    idle(&source).await;
    assert!(source.timers_in_memory().is_empty());
    source.advance_to(far - HORIZON_MS / 2);
    idle(&source).await;
    assert_eq!(source.timers_in_memory().len(), 1);
    source.advance_to(far);
    assert_eq!(ids(&next(&source).await), ["c"]);
    source.close();
}

#[tokio::test]
async fn a_timer_the_host_stores_later_is_taken_in_whichever_window_it_falls() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    three(store.as_ref()).await;
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    next(&source).await;
    idle(&source).await;
    // Within the loaded window: straight into the wheel.
    write(store.as_ref(), vec![timer("b", "soon", T0 + 1_000)]).await;
    source.scheduled("b", "soon", T0 + 1_000);
    // Beyond it: only the next load moves earlier.
    let later = T0 + 10 * HORIZON_MS;
    write(store.as_ref(), vec![timer("c", "later", later)]).await;
    source.scheduled("c", "later", later);
    assert_eq!(
        source.timers_in_memory(),
        [("b".to_owned(), "soon".to_owned())]
    );
    assert_eq!(source.next_due(), Some(T0 + 1_000));
    source.advance_to(T0 + 1_000);
    assert_eq!(ids(&next(&source).await), ["b"]);
    idle(&source).await;
    assert_eq!(source.next_due(), Some(later - HORIZON_MS / 2));
    source.advance_to(later);
    assert_eq!(ids(&next(&source).await), ["c"]);
    source.close();
}

#[tokio::test]
async fn a_timer_of_a_complete_execution_gives_no_work() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    three(store.as_ref()).await;
    write(
        store.as_ref(),
        vec![
            timer("b", "nap", T0 + 10),
            // Completing drops the execution's timers; one stored again after (as a host that
            // lost a race would) must still not resume it.
            Op::Status {
                id: "b".into(),
                status: Status::Complete,
                result: Some(b"{}".to_vec()),
            },
        ],
    )
    .await;
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    next(&source).await;
    idle(&source).await;
    source.scheduled("b", "nap", T0 + 10);
    source.advance_to(T0 + 10);
    idle(&source).await;
    assert!(source.take(10).is_empty());
    source.close();
}

#[tokio::test]
async fn no_more_than_the_cap_of_snapshots_waits_for_the_host() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let count = READY_CAP * 2 + 300;
    let ops: Vec<Op> = (0..count).map(|n| start(&format!("e{n:05}"))).collect();
    write(store.as_ref(), ops).await;
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    let mut seen = Vec::new();
    loop {
        tokio::time::timeout(Duration::from_secs(10), source.wait())
            .await
            .unwrap()
            .unwrap();
        // Let the driver read as far as it may before taking.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let taken = resumes(source.take(usize::MAX));
        assert!(taken.len() <= READY_CAP, "{} ready at once", taken.len());
        seen.extend(taken.into_iter().map(|w| w.execution_id));
        if seen.len() == count {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), count);
    idle(&source).await;
    source.close();
}

#[tokio::test]
async fn the_wall_clock_fires_by_itself() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    three(store.as_ref()).await;
    let source = WorkSource::start(Arc::clone(&store), Clock::Wall);
    next(&source).await;
    let due = now_ms() + 30;
    write(store.as_ref(), vec![timer("c", "nap", due)]).await;
    source.scheduled("c", "nap", due);
    let started = Instant::now();
    assert_eq!(ids(&next(&source).await), ["c"]);
    assert!(now_ms() >= due, "fired before its time");
    assert!(started.elapsed() < Duration::from_secs(5));
    source.close();
}

#[tokio::test]
async fn closing_ends_the_waits() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let source = Arc::new(WorkSource::start(store, manual(T0)));
    let waiter = tokio::spawn({
        let source = Arc::clone(&source);
        async move { source.wait().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    source.close();
    assert_eq!(waiter.await.unwrap(), Err(Closed));
    assert_eq!(source.wait().await, Err(Closed));
}

#[tokio::test]
async fn on_a_sqlite_file_too() {
    let dir = std::env::temp_dir().join(format!("plait-work-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("work.db").display());
    let config = crate::store::sql::Config::new(&url, "plait_", "full").unwrap();
    let store: Arc<dyn Store> = Arc::new(crate::store::sql::SqlStore::open(&config).await.unwrap());
    three(store.as_ref()).await;
    write(store.as_ref(), vec![timer("b", "nap", T0 + 100)]).await;
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    assert_eq!(ids(&next(&source).await), ["a"]);
    source.advance_to(T0 + 100);
    let work = next(&source).await;
    assert_eq!(ids(&work), ["b"]);
    assert_eq!(work[0].snapshot.deferreds[0].name, "nap");
    source.close();
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn mail(request_id: i64, entity_id: &str) -> Message {
    Message {
        request_id,
        address: Address {
            entity_type: "Counter".into(),
            entity_id: entity_id.into(),
        },
        tag: "increment".into(),
        payload: b"{}".to_vec(),
        persisted: false,
        forwarded: false,
        saved_ms: None,
    }
}

#[tokio::test]
async fn entity_requests_run_as_their_mailboxes_allow_and_idle_instances_passivate() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let source = WorkSource::start(Arc::clone(&store), manual(T0));
    tokio::time::timeout(Duration::from_secs(10), source.started())
        .await
        .unwrap()
        .unwrap();
    let (answers, ready) = source.offer(vec![mail(1, "a")]);
    assert!(matches!(answers[0], Err(Refusal::NotRegistered(_))));
    assert!(ready.is_empty());
    source.register_entity(
        "Counter",
        EntityOptions {
            max_idle_ms: Some(1_000),
            ..EntityOptions::default()
        },
    );
    let (answers, ready) = source.offer(vec![mail(1, "a"), mail(2, "a"), mail(3, "b")]);
    assert!(answers.iter().all(Result::is_ok));
    let ready: Vec<i64> = ready.iter().map(|d| d.message.request_id).collect();
    assert_eq!(ready, [1, 3], "one at a time per instance");
    let address = mail(1, "a").address;
    let freed = source.done(&[(address.clone(), 1)]);
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].message.request_id, 2);
    source.done(&[(address.clone(), 2), (mail(3, "b").address, 3)]);
    assert_eq!(source.resident(), 2);
    assert_eq!(source.next_due(), Some(T0 + 1_000));
    idle(&source).await;
    source.advance_to(T0 + 1_000);
    tokio::time::timeout(Duration::from_secs(10), source.wait())
        .await
        .unwrap()
        .unwrap();
    let gone: Vec<Work> = source.take(10);
    assert_eq!(
        gone,
        [
            Work::Passivate(address),
            Work::Passivate(mail(3, "b").address)
        ]
    );
    assert_eq!(source.resident(), 0);
    source.close();
}

fn stored(id: i64, entity_id: &str, deliver_at: Option<u64>) -> Op {
    Op::Request {
        request: crate::store::Request {
            id,
            shard: "default:1".into(),
            entity_type: "Counter".into(),
            entity_id: entity_id.into(),
            tag: "increment".into(),
            payload: b"{}".to_vec(),
            key: None,
            deliver_at,
        },
        claimed_ms: None,
    }
}

/// Waits (up to 10 s) for deliveries, and takes them all: their request ids.
async fn delivered(source: &WorkSource) -> Vec<i64> {
    tokio::time::timeout(Duration::from_secs(10), source.wait())
        .await
        .expect("no work came")
        .unwrap();
    source
        .take(usize::MAX)
        .into_iter()
        .map(|work| match work {
            Work::Deliver(delivery) => delivery.message.request_id,
            other => panic!("not a delivery: {other:?}"),
        })
        .collect()
}

async fn started(store: &Arc<dyn Store>, now: u64) -> WorkSource {
    let source = WorkSource::start(Arc::clone(store), manual(now));
    tokio::time::timeout(Duration::from_secs(10), source.started())
        .await
        .unwrap()
        .unwrap();
    source
}

#[tokio::test]
async fn stored_requests_claimed_by_a_dead_process_are_delivered_on_start() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let mut claimed = stored(1, "a", None);
    if let Op::Request { claimed_ms, .. } = &mut claimed {
        *claimed_ms = Some(T0);
    }
    write(store.as_ref(), vec![claimed, stored(2, "b", None)]).await;
    let source = started(&store, T0).await;
    source.register_entity("Counter", EntityOptions::default());
    let mut ids = delivered(&source).await;
    ids.sort_unstable();
    assert_eq!(ids, [1, 2], "the claim of the dead process was cleared");
    // Claimed now: another read does not deliver them again.
    source.poll_storage(None, false);
    idle(&source).await;
    assert!(source.take(10).is_empty());
    source.close();
}

#[tokio::test]
async fn deliver_at_holds_a_stored_request_until_its_instant() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let source = started(&store, T0).await;
    source.register_entity("Counter", EntityOptions::default());
    write(store.as_ref(), vec![stored(7, "a", Some(T0 + 5_000))]).await;
    source.poll_storage(Some(T0 + 5_000), false);
    idle(&source).await;
    assert!(source.take(10).is_empty());
    assert_eq!(source.next_due(), Some(T0 + 5_000));
    source.advance_to(T0 + 5_000);
    assert_eq!(delivered(&source).await, [7]);
    source.close();
}

#[tokio::test]
async fn a_full_mailbox_leaves_requests_stored_until_a_slot_frees() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let source = started(&store, T0).await;
    source.register_entity(
        "Counter",
        EntityOptions {
            mailbox_capacity: Some(1),
            ..EntityOptions::default()
        },
    );
    write(
        store.as_ref(),
        vec![stored(1, "a", None), stored(2, "a", None)],
    )
    .await;
    source.poll_storage(None, false);
    assert_eq!(delivered(&source).await, [1]);
    idle(&source).await;
    // Request 2 was refused and unclaimed: it stays stored, and comes once 1 is done.
    let address = mail(1, "a").address;
    write(
        store.as_ref(),
        vec![Op::Reply {
            request_id: 1,
            value: b"{}".to_vec(),
            notify: true,
        }],
    )
    .await;
    assert!(source.done(&[(address, 1)]).is_empty());
    assert_eq!(delivered(&source).await, [2]);
    source.close();
}

#[tokio::test]
async fn a_request_of_an_unregistered_type_is_handed_over_after_the_timeout() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let source = started(&store, T0).await;
    source.set_storage_options(10_000, 3_000);
    write(store.as_ref(), vec![stored(9, "x", None)]).await;
    let version = source.due_version();
    source.poll_storage(None, false);
    idle(&source).await;
    assert!(source.take(10).is_empty());
    assert_eq!(source.next_due(), Some(T0 + 3_000));
    // The read moved the next due instant: a host that read the version before, and only
    // now begins to wait, still hears of it (the wait would never end otherwise).
    assert_ne!(source.due_version(), version);
    tokio::time::timeout(Duration::from_secs(1), source.due_changed(version))
        .await
        .expect("a change before the wait ends it at once")
        .unwrap();
    source.advance_to(T0 + 3_000);
    let work = {
        tokio::time::timeout(Duration::from_secs(10), source.wait())
            .await
            .unwrap()
            .unwrap();
        source.take(10)
    };
    match &work[..] {
        [Work::Deliver(delivery)] => {
            assert_eq!(delivery.message.request_id, 9);
            assert!(delivery.activates);
        }
        other => panic!("expected the request, got {other:?}"),
    }
    source.close();
}

// A runner of a cluster: the executions of the shards it holds --------------------------------

/// Two execution ids in different shards (of 300), and their shards.
fn two_shards() -> ((String, String), (String, String)) {
    let per_group = NonZeroU32::new(300).unwrap();
    let first = "exec-0".to_owned();
    let first_shard = default_shard(&first, per_group);
    let second = (1..1_000)
        .map(|i| format!("exec-{i}"))
        .find(|id| default_shard(id, per_group) != first_shard)
        .unwrap();
    let second_shard = default_shard(&second, per_group);
    ((first, first_shard), (second, second_shard))
}

fn runner(store: &Arc<dyn Store>) -> WorkSource {
    WorkSource::start_runner(
        Arc::clone(store),
        manual(T0),
        NonZeroU32::new(300).unwrap(),
        200,
        3_600_000,
    )
}

#[tokio::test]
async fn a_runner_runs_and_fires_only_the_executions_of_the_shards_it_holds() {
    let ((a, shard_a), (b, shard_b)) = two_shards();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    write(
        store.as_ref(),
        vec![
            start(&a),
            start(&b),
            timer(&a, "DurableClock/nap", T0 + 1_000),
            timer(&b, "DurableClock/nap", T0 + 1_000),
        ],
    )
    .await;
    let source = runner(&store);
    source.started().await.unwrap();
    idle(&source).await;
    assert!(source.take(10).is_empty(), "it holds no shard yet");
    source.shard_host().acquired(vec![shard_a.clone()]);
    let work = next(&source).await;
    assert_eq!(ids(&work), [a.as_str()]);
    assert!(work[0].recovered, "listed on acquiring its shard");
    idle(&source).await;
    assert_eq!(
        source.timers_in_memory(),
        [(a.clone(), "DurableClock/nap".to_owned())]
    );
    source.advance_to(T0 + 1_000);
    let work = next(&source).await;
    assert_eq!(ids(&work), [a.as_str()]);
    assert_eq!(work[0].fired.as_deref(), Some("DurableClock/nap"));
    idle(&source).await;
    // `b`'s timer is still stored, for its shard's owner.
    let (stored, _) = store.timers_between(-1, i64::MAX).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|t| t.execution_id.as_str())
            .collect::<Vec<_>>(),
        [b.as_str()]
    );
    // Acquiring `b`'s shard lists it and loads its timer, due already: it fires.
    source.shard_host().acquired(vec![shard_b]);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(next(&source).await);
    }
    assert!(seen.iter().all(|r| r.execution_id == b));
    assert!(seen.iter().any(|r| r.recovered));
    assert!(seen
        .iter()
        .any(|r| r.fired.as_deref() == Some("DurableClock/nap")));
    idle(&source).await;
    // A shard released: its timers are not fired here any more.
    write(
        store.as_ref(),
        vec![timer(&a, "DurableClock/late", T0 + 2_000)],
    )
    .await;
    source.scheduled(&a, "DurableClock/late", T0 + 2_000);
    source.shard_host().releasing(vec![shard_a], false);
    let work = source.take(10);
    assert!(
        matches!(work.as_slice(), [Work::Release { .. }]),
        "{work:?}"
    );
    source.advance_to(T0 + 2_000);
    idle(&source).await;
    assert!(
        source.take(10).is_empty(),
        "fired a timer of a shard it left"
    );
    let (stored, _) = store.timers_between(-1, i64::MAX).await.unwrap();
    assert_eq!(stored.len(), 1, "the timer stays stored for the next owner");
    source.close();
}

#[tokio::test]
async fn a_runner_runs_what_others_wake_and_hears_of_ends_it_awaits() {
    let ((a, shard_a), (b, _)) = two_shards();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    write(store.as_ref(), vec![start(&a), start(&b), suspend(&a)]).await;
    let source = runner(&store);
    source.started().await.unwrap();
    source.shard_host().acquired(vec![shard_a]);
    idle(&source).await;
    let _ = source.take(10);
    // Woken by another process: only the one of a held shard runs here, suspended or not.
    source
        .shard_host()
        .executions_woken(vec![a.clone(), b.clone()]);
    let work = next(&source).await;
    assert_eq!(ids(&work), [a.as_str()]);
    assert!(!work[0].recovered);
    // An execution another runner runs: its end comes back once stored and notified.
    source.await_executions(std::slice::from_ref(&b), false);
    idle(&source).await;
    assert!(source.take(10).is_empty(), "still running");
    write(
        store.as_ref(),
        vec![Op::Status {
            id: b.clone(),
            status: Status::Complete,
            result: Some(b"{}".to_vec()),
        }],
    )
    .await;
    source
        .shard_host()
        .executions_ended(std::slice::from_ref(&b));
    tokio::time::timeout(Duration::from_secs(10), source.wait())
        .await
        .unwrap()
        .unwrap();
    match source.take(10).as_slice() {
        [Work::Ended {
            execution_id,
            execution,
        }] => {
            assert_eq!(execution_id, &b);
            assert_eq!(execution.status, Status::Complete);
        }
        other => panic!("not the end: {other:?}"),
    }
    source.close();
}

fn sent_after_save(request_id: i64, entity_id: &str, saved_ms: u64) -> Message {
    Message {
        persisted: true,
        forwarded: true,
        saved_ms: Some(saved_ms),
        ..mail(request_id, entity_id)
    }
}

#[tokio::test]
async fn a_request_sent_after_its_save_is_taken_only_while_storage_cannot_deliver_it() {
    const S: u64 = 1_000;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let shard = default_shard("a", NonZeroU32::new(300).unwrap());
    // Request 1 was saved and its claim cleared (its owner took the shard over since).
    let mut saved = stored(1, "a", None);
    if let Op::Request { request, .. } = &mut saved {
        request.shard.clone_from(&shard);
    }
    write(store.as_ref(), vec![saved]).await;
    let source = runner(&store);
    source.started().await.unwrap();
    source.register_entity("Counter", EntityOptions::default());
    let inbox = source.inbox();
    let refused = inbox.offer_remote(vec![sent_after_save(1, "a", T0)]);
    assert!(
        matches!(refused[0], Err(Refusal::NotAssigned { .. })),
        "not held yet"
    );
    source.shard_host().acquired(vec![shard]);
    assert_eq!(delivered(&source).await, [1], "the read delivers it");
    source.done(&[(mail(1, "a").address, 1)]);
    let answers = inbox.offer_remote(vec![
        // Its copy comes over the transport after the stored one ran: not taken again.
        sent_after_save(1, "a", T0),
        // Another, saved claimed and sent at once: taken.
        sent_after_save(2, "a", T0),
    ]);
    assert!(matches!(answers[0], Err(Refusal::NotAssigned { .. })));
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    // One whose claim is about to lapse (a read may take it): left to storage.
    source.advance_to(T0 + 20 * S);
    let late = inbox.offer_remote(vec![sent_after_save(3, "a", T0)]);
    assert!(matches!(late[0], Err(Refusal::NotAssigned { .. })));
    source.close();
}

//! A cluster's runners on PostgreSQL: registration and health, and shard leases that fence the
//! writes of a runner that lost them. The database refuses a stale owner's commit, whatever
//! the stale owner believes.

use super::*;

const SHARD: &str = "default:7";

async fn open_cluster(place: &Place) -> SqlStore {
    SqlStore::open(&place.config().for_cluster()).await.unwrap()
}

/// A registered runner at `127.0.0.1:<port>` on its own store, holding its session lock.
async fn runner(place: &Place, port: u16) -> (SqlStore, RunnerStorage) {
    let store = open_cluster(place).await;
    let runner = store
        .runner_storage(&format!("127.0.0.1:{port}"), true)
        .unwrap();
    runner.register("{}").await.unwrap();
    (store, runner)
}

fn owned(shard: &str, op: Op) -> Op {
    Op::Owned {
        shard: shard.to_owned(),
        op: Box::new(op),
    }
}

async fn executions(place: &Place) -> Vec<String> {
    place
        .query_texts("SELECT id FROM {p}executions ORDER BY id")
        .await
}

async fn cleanup(place: Place) {
    place
        .execute("DROP TABLE IF EXISTS {p}runners, {p}notify_chunks CASCADE")
        .await;
    place.cleanup().await;
}

#[tokio::test]
async fn a_runner_whose_lease_lapsed_is_refused_by_the_database() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let ((a, a_runner), (b, b_runner)) = (runner(&place, 1).await, runner(&place, 2).await);
    let (a_fences, b_fences) = (a.shard_fences().unwrap(), b.shard_fences().unwrap());
    let shards = [SHARD.to_owned()];

    let taken = a_runner
        .acquire(&shards, Duration::from_millis(1_500))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "a free shard is taken");
    let first_epoch = taken[0].1;
    a_fences.hold(SHARD, first_epoch);
    // Held: `b` may not take it, and `a`'s owned writes commit.
    assert!(b_runner
        .acquire(&shards, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        write(&a, vec![owned(SHARD, start("while-held"))]).await,
        vec![OpResult::Created]
    );
    // An op of a shard `a` never held is answered `Fenced` without reaching the database.
    assert_eq!(
        write(&a, vec![owned("default:8", start("never-held"))]).await,
        vec![OpResult::Fenced]
    );

    // `a` stops renewing (paused, cut off): the lease lapses by the database's clock, `b`
    // takes the shard over with a later epoch.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let taken = b_runner
        .acquire(&shards, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "a lapsed lease is taken over");
    assert!(taken[0].1 > first_epoch, "the epoch moves on");
    b_fences.hold(SHARD, taken[0].1);

    // `a` still believes it holds the shard: the database refuses its commit, the other ops of
    // the same commit (not owned, or owned by a shard still held) go in, and `a` stops
    // fencing with the shard.
    assert_eq!(a_fences.epoch(SHARD), Some(first_epoch));
    assert_eq!(
        write(&a, vec![owned(SHARD, start("stale")), start("unowned")]).await,
        vec![OpResult::Fenced, OpResult::Created]
    );
    assert_eq!(a_fences.epoch(SHARD), None);
    assert_eq!(a_fences.refusals().await, vec![SHARD.to_owned()]);
    assert_eq!(a_fences.fenced_writes(), 2);
    assert!(a_runner
        .renew(&[(SHARD.to_owned(), first_epoch)], Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    // The new owner writes on.
    assert_eq!(
        write(&b, vec![owned(SHARD, start("new-owner"))]).await,
        vec![OpResult::Created]
    );
    assert_eq!(
        executions(&place).await,
        vec!["new-owner", "unowned", "while-held"]
    );
    a.close().await;
    b.close().await;
    cleanup(place).await;
}

#[tokio::test]
async fn a_dead_runners_shards_are_taken_before_their_leases_lapse() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let ((a, a_runner), (b, b_runner)) = (runner(&place, 1).await, runner(&place, 2).await);
    let expiration = Duration::from_secs(30);
    let healthy = |rows: Vec<RunnerRow>| {
        rows.into_iter()
            .map(|row| (row.address, row.healthy))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        healthy(b_runner.runners(expiration).await.unwrap()),
        vec![("127.0.0.1:1".into(), true), ("127.0.0.1:2".into(), true)]
    );
    let shards = [SHARD.to_owned()];
    assert_eq!(
        a_runner.acquire(&shards, expiration).await.unwrap().len(),
        1
    );
    assert!(b_runner
        .acquire(&shards, expiration)
        .await
        .unwrap()
        .is_empty());

    // `a`'s lock session ends (its process died): it is unhealthy as soon as the server has
    // ended the session (it may take a moment after the connection closes), and its lease is
    // taken although its 30 s have not passed.
    a_runner.close().await;
    let dead = vec![("127.0.0.1:1".into(), false), ("127.0.0.1:2".into(), true)];
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthy(b_runner.runners(expiration).await.unwrap()) != dead {
        assert!(
            Instant::now() < deadline,
            "the closed session still holds its lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b_runner.acquire(&shards, expiration).await.unwrap().len(),
        1
    );
    // A runner unregistering removes itself and those whose heartbeat is stale.
    b_runner.unregister(expiration).await.unwrap();
    assert_eq!(
        healthy(b_runner.runners(expiration).await.unwrap()),
        vec![("127.0.0.1:1".into(), false)]
    );
    b_runner.close().await;
    a.close().await;
    b.close().await;
    cleanup(place).await;
}

//! The engine lease on PostgreSQL: the database refuses the commits of an engine that lost it,
//! whether another engine took it over, its lock session was terminated, or it expired.

use super::*;

/// Times that leave every check to the test: the keeper looks at its session rarely.
fn slow_keeper() -> LeaseTimes {
    LeaseTimes {
        ttl: Duration::from_mins(2),
        renew_every: Duration::from_mins(1),
        check_every: Duration::from_mins(1),
    }
}

async fn open_with(place: &Place, times: LeaseTimes) -> SqlStore {
    SqlStore::open(&place.config().with_lease_times(times).unwrap())
        .await
        .unwrap()
}

/// The sessions holding the engine lease's advisory lock, by `what` of each: `l.pid` or a
/// function of it.
fn lock_sessions_sql(place: &Place, what: &str) -> String {
    let key = connect::advisory_key(&place.prefix);
    format!(
        "SELECT ({what})::text FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = \
         (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((l.classid::bigint << 32) | l.objid::bigint) = {key}"
    )
}

async fn lock_sessions(place: &Place) -> Vec<String> {
    place.query_texts(&lock_sessions_sql(place, "l.pid")).await
}

/// Ends the session that holds the engine lease's advisory lock, as an operator's
/// `pg_terminate_backend` or an idle-session timeout would; returns its process id.
async fn terminate_lock_session(place: &Place) -> String {
    let pids = lock_sessions(place).await;
    assert_eq!(pids.len(), 1, "one lock session");
    let killed = place
        .query_texts(&format!("SELECT pg_terminate_backend({})::text", pids[0]))
        .await;
    assert_eq!(killed, vec!["true".to_owned()]);
    pids[0].clone()
}

async fn epoch(place: &Place) -> String {
    place
        .query_texts("SELECT epoch::text FROM {p}leases WHERE name = 'engine'")
        .await
        .pop()
        .unwrap()
}

#[tokio::test]
async fn a_lease_taken_over_fences_every_later_commit() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let store = open_with(&place, slow_keeper()).await;
    assert_eq!(store.lease_state(), Some(LeaseState::Held(1)));
    write(&store, vec![start("before")]).await;
    // Another engine's acquisition, as the database sees it.
    place
        .execute("UPDATE {p}leases SET epoch = epoch + 1, holder = 'other' WHERE name = 'engine'")
        .await;
    let err = store
        .write(vec![start("after")])
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Fenced { .. }), "{err}");
    assert!(err.to_string().contains("lost its lease"), "{err}");
    assert!(store.lost().await.unwrap().contains("took it over"));
    // Refused at once from now on, and nothing of it was stored.
    assert!(matches!(
        store.write(vec![start("later")]),
        Err(SqlError::Fenced { .. })
    ));
    assert!(store.execution("before").await.unwrap().is_some());
    assert!(store.execution("after").await.unwrap().is_none());
    store.close().await;
    place.cleanup().await;
}

#[tokio::test]
async fn an_expired_lease_nobody_took_is_renewed_and_the_commit_goes_through() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let store = open_with(&place, slow_keeper()).await;
    // Paused past its expiry (the keeper never ran meanwhile).
    place
        .execute("UPDATE {p}leases SET expires_at = now() - interval '1 second'")
        .await;
    assert_eq!(
        write(&store, vec![start("late")]).await,
        vec![OpResult::Created]
    );
    assert_eq!(store.lease_state(), Some(LeaseState::Held(1)));
    let left = place
        .query_texts("SELECT (expires_at > now() + interval '100 seconds')::text FROM {p}leases")
        .await;
    assert_eq!(left, vec!["true".to_owned()], "renewed for a whole ttl");
    store.close().await;
    place.cleanup().await;
}

#[tokio::test]
async fn a_terminated_lock_session_lets_a_new_engine_in_and_fences_the_old_one() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let old = open_with(&place, slow_keeper()).await;
    write(&old, vec![start("e")]).await;
    let ended = terminate_lock_session(&place).await;
    // Gone once the server has ended the session.
    while lock_sessions(&place).await.contains(&ended) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The old engine's lease has not expired, but its session is gone: a newcomer may take it.
    let new = open_with(&place, slow_keeper()).await;
    assert_eq!(new.lease_state(), Some(LeaseState::Held(2)));
    assert_eq!(epoch(&place).await, "2");
    let err = old
        .write(vec![append("e", "step/1", 0, b"old")])
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Fenced { .. }), "{err}");
    assert_eq!(
        write(&new, vec![append("e", "step/1", 0, b"new")]).await,
        done(&[true])
    );
    let snapshot = new.snapshot("e").await.unwrap().unwrap();
    assert_eq!(snapshot.entries, vec![entry("step/1", 0, b"new")]);
    old.close().await;
    new.close().await;
    place.cleanup().await;
}

#[tokio::test]
async fn an_engine_whose_lock_session_ended_takes_the_lock_again_and_goes_on() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let times = LeaseTimes {
        ttl: Duration::from_secs(30),
        renew_every: Duration::from_secs(5),
        check_every: Duration::from_millis(50),
    };
    let store = open_with(&place, times).await;
    let ended = terminate_lock_session(&place).await;
    // Within a few checks it has a new session holding the lock (a newcomer trying before
    // then would take the lease over, as the test above shows).
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock_sessions(&place).await.iter().all(|pid| *pid == ended) {
        assert!(Instant::now() < deadline, "the lock was never taken again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        SqlStore::open(&place.config()).await,
        Err(SqlError::Locked { .. })
    ));
    assert_eq!(
        write(&store, vec![start("on")]).await,
        vec![OpResult::Created]
    );
    assert_eq!(store.lease_state(), Some(LeaseState::Held(1)));
    store.close().await;
    place.cleanup().await;
}

#[tokio::test]
async fn a_closed_engine_lets_the_next_in_at_once_with_a_new_epoch() {
    let Some(place) = Place::postgres().await else {
        return;
    };
    let first = place.open().await;
    first.close().await;
    assert_eq!(first.lost().await, None, "closing is not losing");
    let second = place.open().await;
    assert_eq!(second.lease_state(), Some(LeaseState::Held(2)));
    second.close().await;
    place.cleanup().await;
}

#[tokio::test]
async fn sqlite_has_no_lease_to_lose() {
    let place = Place::sqlite();
    let store = place.open().await;
    assert_eq!(store.lease_state(), None);
    assert_eq!(store.lost().await, None);
    store.close().await;
    place.cleanup().await;
}

#[test]
fn lease_times_are_checked() {
    let config = Config::new("postgres://x@localhost/db", "plait_", "full").unwrap();
    let bad = LeaseTimes {
        ttl: Duration::from_secs(10),
        renew_every: Duration::from_secs(10),
        check_every: Duration::from_secs(1),
    };
    assert!(matches!(
        config.clone().with_lease_times(bad),
        Err(SqlError::InvalidArgument(_))
    ));
    let times = LeaseTimes::for_ttl(Duration::from_secs(35));
    assert_eq!(times.renew_every, Duration::from_secs(10));
    assert_eq!(times.check_every, Duration::from_secs(1));
    assert!(config.with_lease_times(times).is_ok());
}

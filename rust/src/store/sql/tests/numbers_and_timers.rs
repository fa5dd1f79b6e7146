//! The writer's memory of execution numbers (`super::super::numbers`), migration 0004,
//! `with_status` across many transitions, and ranges of timers.

use super::*;

/// Applies `ops` to both stores and checks that they answer alike.
async fn check(store: &SqlStore, memory: &MemoryStore, ops: Vec<Op>) {
    let expected: Vec<OpResult> = ops.iter().map(|op| apply_to_memory(memory, op)).collect();
    assert_eq!(write(store, ops.clone()).await, expected, "{ops:?}");
}

/// Checks that both stores hold the same records for `ids`, timers and statuses.
async fn same_records(store: &SqlStore, memory: &MemoryStore, ids: &[&str]) {
    for id in ids {
        assert_eq!(
            store.snapshot(id).await.unwrap(),
            memory.snapshot(id),
            "{id}"
        );
    }
    assert_eq!(store.timers().await.unwrap(), memory.timers());
    for which in [Status::Running, Status::Suspended, Status::Complete] {
        let mut expected = memory.with_status(which);
        expected.sort();
        assert_eq!(
            store.with_status(which).await.unwrap(),
            expected,
            "{which:?}"
        );
    }
}

/// Every kind of op on `id`, repeats included; `tag` keeps the names of one round apart.
fn every_op(id: &str, tag: &str) -> Vec<Op> {
    vec![
        append(id, &format!("{tag}/1"), 0, tag.as_bytes()),
        append(id, &format!("{tag}/1"), 1, b"late"),
        deferred(id, tag, b"D"),
        deferred(id, tag, b"late"),
        timer(id, tag, 40),
        timer(id, tag, 41),
        Op::Interrupt { id: id.into() },
        status(id, Status::Suspended, Some(b"s")),
        start(id),
        Op::Untimer {
            execution_id: id.into(),
            name: tag.into(),
        },
        timer(id, &format!("{tag}2"), 42),
        status(id, Status::Running, None),
    ]
}

#[tokio::test]
async fn ops_find_executions_of_earlier_commits_of_the_same_commit_and_of_a_former_engine() {
    for place in Place::all().await {
        let memory = MemoryStore::default();
        let store = place.open().await;
        // `old` is stored by an engine before this one: this writer never saw its number.
        check(
            &store,
            &memory,
            vec![start("old"), append("old", "k/1", 0, b"o")],
        )
        .await;
        store.close().await;
        let store = place.open().await;
        check(&store, &memory, vec![start("earlier")]).await;
        let ids = ["same", "earlier", "old", "ghost"];
        // `same` is started and used in one transaction; `ghost` is never stored.
        let mut ops = vec![start("same")];
        for id in ids {
            ops.extend(every_op(id, "a"));
        }
        check(&store, &memory, ops).await;
        same_records(&store, &memory, &ids).await;
        // Again, now that the writer knows each of them.
        let ops = ids.iter().flat_map(|id| every_op(id, "b")).collect();
        check(&store, &memory, ops).await;
        // Completion is final, by number as it was by id.
        let ops = ids
            .iter()
            .flat_map(|&id| {
                [
                    status(id, Status::Complete, Some(b"r")),
                    status(id, Status::Running, None),
                    Op::Interrupt { id: id.into() },
                    start(id),
                    timer(id, "after", 1),
                    append(id, "c/1", 0, b"c"),
                ]
            })
            .collect();
        check(&store, &memory, ops).await;
        same_records(&store, &memory, &ids).await;
        store.close().await;

        // A new engine, knowing none of them, reads and writes the same.
        let store = place.open().await;
        let ops = ids.iter().flat_map(|id| every_op(id, "c")).collect();
        check(&store, &memory, ops).await;
        same_records(&store, &memory, &ids).await;
        store.close().await;
        place.cleanup().await;
    }
}

/// Recreates the timers table that a test dropped to make transactions fail.
async fn recreate_timers(place: &Place) {
    let rowid = match place.dialect {
        Dialect::Sqlite => " WITHOUT ROWID",
        Dialect::Postgres => "",
    };
    place
        .execute(&format!(
            "CREATE TABLE {{p}}timers (execution_id TEXT NOT NULL, name TEXT NOT NULL, \
             due_ms BIGINT NOT NULL, PRIMARY KEY (execution_id, name)){rowid}"
        ))
        .await;
    place
        .execute("CREATE INDEX {p}timers_due ON {p}timers (due_ms)")
        .await;
}

#[tokio::test]
async fn a_start_rolled_back_leaves_no_number_behind() {
    for place in Place::all().await {
        let store = place.open().await;
        write(&store, vec![start("a")]).await;
        place.execute("DROP TABLE {p}timers").await;
        // Alone in its transaction, the start of x fails with the timer after it.
        let err = store
            .write(vec![
                start("x"),
                append("x", "k/1", 0, b"X"),
                timer("x", "t", 1),
            ])
            .unwrap()
            .await
            .unwrap_err();
        assert!(matches!(err, SqlError::Database { .. }), "{err}");
        // Among others, z's batch is retried alone and fails alone; b's commits.
        let good = store
            .write(vec![start("b"), append("b", "k/1", 0, b"B")])
            .unwrap();
        let bad = store.write(vec![start("z"), timer("z", "t", 1)]).unwrap();
        let after = store.write(vec![append("b", "k2/1", 1, b"B")]).unwrap();
        assert_eq!(
            good.await.unwrap(),
            vec![OpResult::Created, OpResult::Done(true)]
        );
        assert!(bad.await.is_err());
        assert_eq!(after.await.unwrap(), done(&[true]));
        recreate_timers(&place).await;

        // On SQLite, b and y now hold the numbers x and z had for a moment: ops on x or z
        // that went by a remembered number would land in their journals.
        assert_eq!(write(&store, vec![start("y")]).await, [OpResult::Created]);
        for id in ["x", "z"] {
            let results = write(
                &store,
                vec![
                    append(id, "k/1", 0, b"X"),
                    deferred(id, "d", b"X"),
                    status(id, Status::Suspended, None),
                    Op::Interrupt { id: id.into() },
                    timer(id, "t", 1),
                ],
            )
            .await;
            assert_eq!(
                results,
                [
                    OpResult::Done(false),
                    OpResult::UnknownExecution,
                    OpResult::Done(false),
                    OpResult::UnknownExecution,
                    OpResult::Done(false),
                ],
                "{id}"
            );
            assert_eq!(store.execution(id).await.unwrap(), None, "{id}");
        }
        let y = store.snapshot("y").await.unwrap().unwrap();
        assert!(y.entries.is_empty() && y.deferreds.is_empty());
        assert_eq!(y.execution.status, Status::Running);
        let b = store.snapshot("b").await.unwrap().unwrap();
        assert_eq!(b.entries, [entry("k/1", 0, b"B"), entry("k2/1", 1, b"B")]);
        assert!(store.timers().await.unwrap().is_empty());
        assert_eq!(
            store.with_status(Status::Running).await.unwrap(),
            ["a", "b", "y"]
        );

        // Started for good now, x gets a number of its own.
        let results = write(&store, vec![start("x"), append("x", "k/1", 0, b"X")]).await;
        assert_eq!(results, [OpResult::Created, OpResult::Done(true)]);
        let results = write(&store, vec![append("x", "k2/1", 1, b"X")]).await;
        assert_eq!(results, done(&[true]));
        let x = store.snapshot("x").await.unwrap().unwrap();
        assert_eq!(x.entries.len(), 2);
        assert_eq!(
            store.snapshot("b").await.unwrap().unwrap().entries,
            b.entries
        );
        assert_eq!(store.snapshot("y").await.unwrap().unwrap(), y);
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn with_status_stays_right_through_many_transitions() {
    for place in Place::all().await {
        let store = place.open().await;
        let memory = MemoryStore::default();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let statuses = [Status::Running, Status::Suspended, Status::Complete];
        for round in 0..40 {
            let ops = (0..25)
                .map(|_| {
                    let id = format!("s{}", next(60));
                    match next(8) {
                        0 | 1 => start(&id),
                        2 => Op::Interrupt { id },
                        3 => timer(&id, "t", next(100)),
                        // Completing is rarer, so that most executions move back and forth.
                        4 if next(4) == 0 => status(&id, Status::Complete, Some(b"r")),
                        _ => status(&id, statuses[usize::from(next(2) == 0)], None),
                    }
                })
                .collect();
            check(&store, &memory, ops).await;
            if round % 5 == 4 {
                same_records(&store, &memory, &[]).await;
            }
        }
        same_records(&store, &memory, &[]).await;
        store.close().await;
        // Read by a new engine, as recovery reads them.
        let store = place.open().await;
        same_records(&store, &memory, &[]).await;
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn a_database_at_the_third_migration_is_migrated_on_open() {
    for place in Place::all().await {
        migrate_to(&place, 3).await;
        store_rows_of_the_third_migration(&place).await;

        let store = place.open().await;
        let memory = MemoryStore::default();
        for (id, status, parent) in [
            ("r", Status::Running, None),
            ("s", Status::Suspended, None),
            ("c", Status::Complete, None),
            ("q", Status::Running, Some("r")),
        ] {
            let mut ops = vec![Op::Start {
                id: id.into(),
                workflow: "W".into(),
                payload: b"{}".to_vec(),
                parent: parent.map(str::to_owned),
            }];
            if id == "s" {
                ops.push(Op::Interrupt { id: id.into() });
            }
            if id == "s" || id == "c" {
                ops.push(append(id, "k/1", 0, b"1"));
            }
            let result = (status == Status::Complete).then(|| b"{}".to_vec());
            ops.push(Op::Status {
                id: id.into(),
                status,
                result,
            });
            assert!(memory
                .apply(ops)
                .iter()
                .all(|r| matches!(r, OpResult::Created | OpResult::Done(true))));
        }
        for (id, due) in [("s", 5), ("q", 9)] {
            assert_eq!(
                memory.apply(vec![timer(id, "t", due)]),
                [OpResult::Done(true)]
            );
        }
        let ids = ["r", "s", "c", "q", "n"];
        same_records(&store, &memory, &ids).await;
        check(
            &store,
            &memory,
            vec![
                status("s", Status::Running, None),
                append("s", "k/1", 1, b"late"),
                append("s", "k2/1", 1, b"2"),
                status("r", Status::Complete, Some(b"r")),
                start("n"),
                status("q", Status::Suspended, None),
                timer("c", "t", 1),
                start("c"),
                status("q", Status::Complete, None),
                status("q", Status::Running, None),
            ],
        )
        .await;
        same_records(&store, &memory, &ids).await;
        store.close().await;

        if place.dialect == Dialect::Postgres {
            check_the_schema_of_the_fourth_migration(&place).await;
        }
        place.cleanup().await;
    }
}

/// Rows as the third migration's schema held them: executions of every status (numbered by
/// the database), steps keyed by number, timers.
async fn store_rows_of_the_third_migration(place: &Place) {
    let blob = |hex: &str| match place.dialect {
        Dialect::Sqlite => format!("x'{hex}'"),
        Dialect::Postgres => format!("'\\x{hex}'::bytea"),
    };
    place
        .execute(&format!(
            "INSERT INTO {{p}}executions (id, workflow, payload, parent, status, result, \
                 interrupted, created_ms, updated_ms) VALUES \
                 ('r', 'W', {payload}, NULL, 'running', NULL, FALSE, 1, 1), \
                 ('s', 'W', {payload}, NULL, 'suspended', NULL, TRUE, 2, 2), \
                 ('c', 'W', {payload}, NULL, 'complete', {payload}, FALSE, 3, 3), \
                 ('q', 'W', {payload}, 'r', 'running', NULL, FALSE, 4, 4)",
            payload = blob("7b7d"),
        ))
        .await;
    place
        .execute(&format!(
            "INSERT INTO {{p}}journal (execution_no, key, seq, value) \
                 SELECT no, 'k/1', 0, {one} FROM {{p}}executions WHERE id IN ('s', 'c')",
            one = blob("31"),
        ))
        .await;
    place
        .execute(
            "INSERT INTO {p}timers (execution_id, name, due_ms) VALUES ('s', 't', 5), \
                 ('q', 't', 9)",
        )
        .await;
}

/// PostgreSQL after migration 0004: the executions not complete are listed by number, status
/// has no index, and executions leave room for HOT updates.
async fn check_the_schema_of_the_fourth_migration(place: &Place) {
    let active = place
        .query_texts("SELECT no::text FROM {p}active ORDER BY no")
        .await;
    let incomplete = place
        .query_texts("SELECT no::text FROM {p}executions WHERE status <> 'complete' ORDER BY no")
        .await;
    assert_eq!(active, incomplete);
    assert_eq!(active.len(), 2);
    let indexes = place
        .query_texts(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = '{p}executions' \
                 ORDER BY 1",
        )
        .await;
    assert!(
        !indexes.iter().any(|name| name.ends_with("status")),
        "{indexes:?}"
    );
    let options = place
        .query_texts(
            "SELECT array_to_string(reloptions, ',') FROM pg_class \
                 WHERE relname = '{p}executions'",
        )
        .await;
    assert_eq!(options, ["fillfactor=50"]);
}

#[tokio::test]
async fn timers_between_reads_a_range_of_due_instants() {
    for place in Place::all().await {
        let store = place.open().await;
        let memory = MemoryStore::default();
        let mut ops = vec![start("a"), start("b")];
        for (id, name, due) in [
            ("b", "t", 20),
            ("a", "t", 10),
            ("a", "u", 20),
            ("a", "v", 30),
            ("b", "zero", 0),
        ] {
            ops.push(timer(id, name, due));
        }
        check(&store, &memory, ops).await;
        let t = |id: &str, name: &str, due_ms| Timer {
            execution_id: id.into(),
            name: name.into(),
            due_ms,
        };
        let cases = [
            // After is exclusive, until inclusive; ties by execution id, then name.
            (10, 20, vec![t("a", "u", 20), t("b", "t", 20)], Some(30)),
            (-1, 0, vec![t("b", "zero", 0)], Some(10)),
            (0, 10, vec![t("a", "t", 10)], Some(20)),
            (-1, 9, vec![t("b", "zero", 0)], Some(10)),
            (11, 19, vec![], Some(20)),
            (30, 100, vec![], None),
            (29, i64::MAX, vec![t("a", "v", 30)], None),
            (20, 10, vec![], Some(20)),
            (i64::MIN, -5, vec![], Some(0)),
        ];
        for (after, until, timers, next) in cases {
            let answer = store.timers_between(after, until).await.unwrap();
            assert_eq!(answer, (timers, next), "({after}, {until}]");
            assert_eq!(
                answer,
                memory.timers_between(after, until),
                "({after}, {until}]"
            );
        }
        // Timers that go, go from the ranges: fired, and with a completed execution.
        check(
            &store,
            &memory,
            vec![
                Op::Untimer {
                    execution_id: "a".into(),
                    name: "t".into(),
                },
                status("b", Status::Complete, None),
            ],
        )
        .await;
        let answer = store.timers_between(-1, 25).await.unwrap();
        assert_eq!(answer, (vec![t("a", "u", 20)], Some(30)));
        assert_eq!(answer, memory.timers_between(-1, 25));
        store.close().await;
        place.cleanup().await;
    }
}

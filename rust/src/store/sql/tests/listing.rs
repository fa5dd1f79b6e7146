//! The operators' reads (`crate::store::listing`): listings page by page with every filter,
//! counts, and histories with times, on SQLite and PostgreSQL beside the memory store.

use super::*;
use crate::{
    clock::now_ms,
    store::{Cursor, Filter, Listed},
};

fn started(id: &str, workflow: &str) -> Op {
    Op::Start {
        id: id.into(),
        workflow: workflow.into(),
        payload: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        parent: None,
    }
}

/// Twelve executions over two workflows and every status, in four batches a few ms apart (so
/// that their creation times differ between batches and tie within one). Results start with
/// `ok` or `no`, as a caller's encoding of success and failure might.
async fn store_executions(store: &dyn Store) {
    /// An execution: id, workflow, the status it moves to (if any) and its result.
    type Stored<'a> = (&'a str, &'a str, Option<Status>, Option<&'a [u8]>);
    let batches: [&[Stored<'_>]; 4] = [
        &[
            ("a1", "A", Some(Status::Complete), Some(b"ok 1")),
            ("a2", "A", Some(Status::Complete), Some(b"no 2")),
            ("b1", "B", None, None),
        ],
        &[
            ("a3", "A", Some(Status::Suspended), None),
            ("b2", "B", Some(Status::Complete), Some(b"ok 3")),
            ("a4", "A", None, None),
        ],
        &[
            ("b3", "B", Some(Status::Suspended), Some(b"cause")),
            ("a5", "A", Some(Status::Complete), Some(b"no 5")),
            ("a6", "A", Some(Status::Complete), Some(b"ok 6")),
        ],
        &[
            ("b4", "B", Some(Status::Complete), Some(b"no 7")),
            ("a7", "A", None, None),
            ("a8", "A", Some(Status::Suspended), None),
        ],
    ];
    for batch in batches {
        let mut ops = Vec::new();
        for (id, workflow, _, _) in batch {
            ops.push(started(id, workflow));
        }
        for (id, _, which, result) in batch {
            if let Some(which) = which {
                ops.push(status(id, *which, *result));
            }
        }
        store.write(ops).unwrap().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every page of `filter`'s listing, `limit` at a time: the ids in order, and the pages.
async fn every_page(store: &dyn Store, filter: &Filter, limit: usize) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut after: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let page = store.list(filter, after, limit).await.unwrap();
        pages += 1;
        assert!(page.executions.len() <= limit);
        ids.extend(page.executions.iter().map(|e| e.id.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(Some(next), page.executions.last().map(Listed::cursor));
                after = Some(next);
            }
            None => return (ids, pages),
        }
        assert!(pages < 100, "the listing does not end");
    }
}

fn filters() -> Vec<Filter> {
    let of = |workflow: Option<&str>, which: Option<Status>, prefixes: &[&[u8]]| Filter {
        workflow: workflow.map(String::from),
        status: which,
        result_prefixes: prefixes.iter().map(|p| p.to_vec()).collect(),
        ..Filter::default()
    };
    vec![
        Filter::default(),
        of(Some("A"), None, &[]),
        of(Some("B"), None, &[]),
        of(Some("C"), None, &[]),
        of(None, Some(Status::Running), &[]),
        of(None, Some(Status::Suspended), &[]),
        of(Some("A"), Some(Status::Suspended), &[]),
        of(None, Some(Status::Complete), &[]),
        of(None, Some(Status::Complete), &[b"ok"]),
        of(Some("A"), Some(Status::Complete), &[b"no"]),
        of(None, Some(Status::Complete), &[b"ok 1", b"no 7"]),
        of(None, None, &[b"ca"]),
        of(Some("a\0"), None, &[]),
    ]
}

#[tokio::test]
async fn listings_page_and_filter_as_the_memory_store_does() {
    let memory = MemoryStore::default();
    store_executions(&memory).await;
    for place in Place::all().await {
        let store = place.open().await;
        store_executions(&store).await;
        let (all, _) = every_page(&store, &Filter::default(), 100).await;
        assert_eq!(
            all,
            ["a8", "a7", "b4", "a6", "a5", "b3", "a4", "b2", "a3", "b1", "a2", "a1"]
        );
        for filter in filters() {
            let (expected, _) = every_page(&memory, &filter, 100).await;
            for limit in [1, 2, 5, 100] {
                let (ids, pages) = every_page(&store, &filter, limit).await;
                assert_eq!(ids, expected, "{filter:?}, limit {limit}");
                assert_eq!(
                    pages,
                    expected.len().div_ceil(limit).max(1),
                    "{filter:?}, limit {limit}"
                );
            }
            for cap in [0, 1, 3, 1000] {
                let expected_count = memory.count(&filter, cap).await.unwrap();
                assert_eq!(
                    expected_count,
                    u64::try_from(expected.len()).unwrap().min(cap),
                    "{filter:?}"
                );
                assert_eq!(store.count(&filter, cap).await.unwrap(), expected_count);
            }
        }
        // What a listed execution holds.
        let page = store.list(&Filter::default(), None, 3).await.unwrap();
        let b4 = &page.executions[2];
        assert_eq!(
            (b4.id.as_str(), b4.workflow.as_str(), b4.status),
            ("b4", "B", Status::Complete)
        );
        assert_eq!(b4.result.as_deref(), Some(&b"no 7"[..]));
        assert!(b4.created_ms <= b4.updated_ms);
        assert!(now_ms() - b4.created_ms < 60_000);
        // A limit of 0 answers nothing; one past the maximum, the maximum.
        assert_eq!(
            store.list(&Filter::default(), None, 0).await.unwrap(),
            Page::default()
        );
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn a_time_range_takes_executions_created_within_it() {
    for place in Place::all().await {
        let store = place.open().await;
        store_executions(&store).await;
        let (all, _) = every_page(&store, &Filter::default(), 100).await;
        let listed = store.list(&Filter::default(), None, 100).await.unwrap();
        let times: Vec<u64> = listed.executions.iter().map(|e| e.created_ms).collect();
        // The third batch: b3, a5 and a6, stored in one transaction.
        let third = times[5];
        assert_eq!(times[3..6], [third; 3]);
        let within = Filter {
            created_from_ms: Some(third),
            created_before_ms: Some(third + 1),
            ..Filter::default()
        };
        let (ids, _) = every_page(&store, &within, 2).await;
        assert_eq!(ids, all[3..6]);
        let since = Filter {
            created_from_ms: Some(third),
            ..Filter::default()
        };
        assert_eq!(every_page(&store, &since, 100).await.0, all[..6]);
        let until = Filter {
            created_before_ms: Some(third),
            ..Filter::default()
        };
        assert_eq!(every_page(&store, &until, 4).await.0, all[6..]);
        assert_eq!(store.count(&until, 100).await.unwrap(), 6);
        let empty = Filter {
            created_from_ms: Some(third),
            created_before_ms: Some(third),
            ..Filter::default()
        };
        assert_eq!(store.count(&empty, 100).await.unwrap(), 0);
        store.close().await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn a_history_holds_the_journal_with_its_times() {
    for place in Place::all().await {
        let store = place.open().await;
        let before = now_ms();
        write(
            &store,
            vec![
                started("h", "H"),
                append("h", "Charge/1", 0, b"fail"),
                append("h", "Charge/2", 1, b"ok"),
                deferred("h", "Approval", b"yes"),
                timer("h", "DurableClock/wait", 99),
                timer("h", "DurableClock/a", 5),
                status("h", Status::Suspended, None),
            ],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        write(&store, vec![append("h", "Ship/1", 2, b"shipped")]).await;
        let after = now_ms();
        let history = store.history("h").await.unwrap().unwrap();
        assert_eq!(history.id, "h");
        assert_eq!(history.execution.workflow, "H");
        assert_eq!(history.execution.status, Status::Suspended);
        assert_eq!(history.execution.payload, b"{\"id\":\"h\"}");
        let keys: Vec<&str> = history.steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["Charge/1", "Charge/2", "Ship/1"]);
        assert_eq!(history.steps[0].value, b"fail");
        // PostgreSQL stamps with its own clock, to the millisecond: a little slack.
        let within =
            |at: Option<u64>| at.is_some_and(|at| at + 1000 >= before && at <= after + 1000);
        assert!(history.steps.iter().all(|s| within(s.at_ms)), "{history:?}");
        assert!(history.steps[2].at_ms >= history.steps[1].at_ms);
        assert_eq!(history.deferreds.len(), 1);
        assert_eq!(history.deferreds[0].name, "Approval");
        assert!(within(history.deferreds[0].at_ms));
        let timers: Vec<(&str, u64)> = history
            .timers
            .iter()
            .map(|t| (t.name.as_str(), t.due_ms))
            .collect();
        assert_eq!(timers, [("DurableClock/a", 5), ("DurableClock/wait", 99)]);
        assert!(history.created_ms >= before && history.created_ms <= after);
        assert!(history.updated_ms >= history.created_ms);
        assert_eq!(store.history("nothing").await.unwrap(), None);
        assert_eq!(store.history("nul\0").await.unwrap(), None);

        // The memory store answers the same records.
        let memory = MemoryStore::default();
        memory.apply(vec![
            started("h", "H"),
            append("h", "Charge/1", 0, b"fail"),
            timer("h", "DurableClock/a", 5),
        ]);
        let remembered = memory.history("h").await.unwrap().unwrap();
        assert_eq!(remembered.steps[0].key, "Charge/1");
        assert!(within(remembered.steps[0].at_ms));
        assert_eq!(remembered.timers.len(), 1);
        store.close().await;
        place.cleanup().await;
    }
}

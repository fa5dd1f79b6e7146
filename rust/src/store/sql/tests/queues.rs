//! Durable queue items in SQLite and PostgreSQL: offered once per id, taken with a claim that
//! stands for the claim timeout, never taken again once done, and never handed to two
//! concurrent takes.

use std::collections::BTreeSet;

use super::*;

fn offer(queue: &str, id: &str, token: Option<&str>) -> Op {
    Op::Offer(QueueItem {
        queue: queue.into(),
        id: id.into(),
        payload: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        token: token.map(str::to_owned),
    })
}

fn queue_done(queue: &str, id: &str) -> Op {
    Op::QueueDone {
        queue: queue.into(),
        id: id.into(),
    }
}

fn ids(taken: &[Taken]) -> Vec<(&str, u32)> {
    taken
        .iter()
        .map(|t| (t.item.id.as_str(), t.attempt))
        .collect()
}

#[tokio::test]
async fn items_are_offered_once_claimed_for_a_while_and_done_for_good() {
    const T: u64 = 1_700_000_000_000;
    for place in Place::all().await {
        let sql = place.open().await;
        let offered = write(
            &sql,
            vec![
                offer("mail", "a", Some("tok-a")),
                offer("mail", "b", None),
                offer("mail", "a", Some("another")),
                offer("other", "a", None),
                start("e1"),
            ],
        )
        .await;
        assert_eq!(
            offered,
            [
                OpResult::Done(true),
                OpResult::Done(true),
                OpResult::Done(false),
                OpResult::Done(true),
                OpResult::Created
            ]
        );
        let first = sql.take("mail", 10, T, 1_000).await.unwrap();
        assert_eq!(ids(&first), [("a", 1), ("b", 1)]);
        assert_eq!(first[0].item.token.as_deref(), Some("tok-a"));
        assert_eq!(first[0].item.payload, b"{\"id\":\"a\"}");
        assert_eq!(first[1].item.token, None);
        // Claimed: not handed out again until the claim is void.
        assert!(sql
            .take("mail", 10, T + 999, 1_000)
            .await
            .unwrap()
            .is_empty());
        // `a` is done (with a deferred of its execution, in one transaction); `b`'s worker died.
        let done = write(
            &sql,
            vec![
                deferred("e1", "DurableQueue/mail/a", b"ok"),
                queue_done("mail", "a"),
                queue_done("mail", "a"),
                queue_done("mail", "zz"),
            ],
        )
        .await;
        assert_eq!(done, done_values(&[true, true, false, false]));
        let again = sql.take("mail", 10, T + 1_000, 1_000).await.unwrap();
        assert_eq!(ids(&again), [("b", 2)]);
        Store::close(&sql).await;
        // Done is durable; so are the claims.
        let reopened = place.open().await;
        assert!(reopened
            .take("mail", 10, T + 1_500, 1_000)
            .await
            .unwrap()
            .is_empty());
        let later = reopened.take("mail", 10, T + 2_000, 1_000).await.unwrap();
        assert_eq!(ids(&later), [("b", 3)]);
        assert_eq!(
            ids(&reopened.take("other", 10, T, 1).await.unwrap()),
            [("a", 1)]
        );
        Store::close(&reopened).await;
        place.cleanup().await;
    }
}

fn done_values(values: &[bool]) -> Vec<OpResult> {
    values.iter().map(|&v| OpResult::Done(v)).collect()
}

#[tokio::test]
async fn concurrent_takes_never_hand_out_one_item_twice() {
    const ITEMS: usize = 300;
    for place in Place::all().await {
        let sql = place.open().await;
        let ops = (0..ITEMS)
            .map(|n| offer("jobs", &format!("j{n:04}"), None))
            .collect();
        write(&sql, ops).await;
        let sql = std::sync::Arc::new(sql);
        let mut takers = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let sql = std::sync::Arc::clone(&sql);
            takers.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let taken = sql.take("jobs", 7, 1_000, 60_000).await.unwrap();
                    if taken.is_empty() {
                        return mine;
                    }
                    mine.extend(taken.into_iter().map(|t| t.item.id));
                }
            });
        }
        let all: Vec<Vec<String>> = takers.join_all().await;
        let count: usize = all.iter().map(Vec::len).sum();
        let distinct: BTreeSet<&String> = all.iter().flatten().collect();
        assert_eq!(count, ITEMS, "on {:?}", place.dialect);
        assert_eq!(distinct.len(), ITEMS);
        Store::close(&*sql).await;
        place.cleanup().await;
    }
}

#[tokio::test]
async fn a_held_claim_is_renewed_and_a_lost_one_is_not() {
    const T: u64 = 1_700_000_000_000;
    let renew = |held_ms, renewed_ms| Op::QueueRenew {
        queue: "mail".into(),
        id: "a".into(),
        held_ms,
        renewed_ms,
    };
    for place in Place::all().await {
        let sql = place.open().await;
        write(&sql, vec![offer("mail", "a", None)]).await;
        assert_eq!(
            ids(&sql.take("mail", 1, T, 1_000).await.unwrap()),
            [("a", 1)]
        );
        // Its worker renews at T + 900: the claim stands until T + 1_900.
        let renewed = write(&sql, vec![renew(T, T + 900), renew(T, T + 901)]).await;
        assert_eq!(renewed, done_values(&[true, false]));
        assert!(sql
            .take("mail", 1, T + 1_500, 1_000)
            .await
            .unwrap()
            .is_empty());
        // Lost (its worker stopped renewing): taken again, and the old holder cannot renew.
        assert_eq!(
            ids(&sql.take("mail", 1, T + 1_900, 1_000).await.unwrap()),
            [("a", 2)]
        );
        let stale = write(
            &sql,
            vec![renew(T + 900, T + 2_000), queue_done("mail", "a")],
        )
        .await;
        assert_eq!(stale, done_values(&[false, true]));
        let after_done = write(&sql, vec![renew(T + 1_900, T + 2_100)]).await;
        assert_eq!(after_done, done_values(&[false]));
        Store::close(&sql).await;
        place.cleanup().await;
    }
}

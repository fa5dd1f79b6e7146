-- Durable queue items (Effect's PersistedQueue, behind DurableQueue).
--
-- An item is stored once per (queue, id); `no` is offer order. `claimed_ms` is the instant of
-- its last take, void after the taker's claim timeout; `attempts` counts takes. `done_ms` set
-- means done: never taken again. Pending items of a queue are a range of the partial index,
-- which done items leave. Workers take with `FOR UPDATE SKIP LOCKED` (see
-- rust/src/store/sql/postgres.rs), so concurrent takes pass each other's rows by.

CREATE TABLE {prefix}queue_items (
    no BIGINT GENERATED ALWAYS AS IDENTITY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    payload BYTEA NOT NULL,
    token TEXT,
    offered_ms BIGINT NOT NULL,
    claimed_ms BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_ms BIGINT,
    PRIMARY KEY (queue, id)
);
CREATE INDEX {prefix}queue_items_pending ON {prefix}queue_items (queue, no)
    WHERE done_ms IS NULL;

-- The queue ops join the message ops of a commit (same parallel arrays):
--   kinds[i]          t1[i]   t2[i]  t3[i]   n1[i]     n2[i]       blobs[i]
--   14 offer          queue   id     token   -         -           payload
--   15 queue_claim    queue   id     -       claim_ms  claimed_ms  -
--   16 queue_done     queue   id
--   17 queue_renew    queue   id     -       held_ms   renewed_ms  -
-- each answered 1 (stored, claimed, marked done, renewed) or 0. The entity message ops keep their
-- function, renamed; `apply_messages` hands each run of them to it, in order.
ALTER FUNCTION {prefix}apply_messages(SMALLINT[], BIGINT[], TEXT[], TEXT[], TEXT[], TEXT[],
                                      TEXT[], BIGINT[], BIGINT[], BYTEA[])
    RENAME TO {prefix}apply_entity_messages;

CREATE FUNCTION {prefix}apply_messages(
    kinds SMALLINT[],
    ids BIGINT[],
    t1 TEXT[],
    t2 TEXT[],
    t3 TEXT[],
    t4 TEXT[],
    t5 TEXT[],
    n1 BIGINT[],
    n2 BIGINT[],
    blobs BYTEA[]
) RETURNS TABLE (
    outcome SMALLINT,
    found_no BIGINT,
    found_workflow TEXT,
    found_payload BYTEA,
    found_parent TEXT,
    found_status TEXT,
    found_result BYTEA,
    found_interrupted BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    total INT := coalesce(array_length(kinds, 1), 0);
    i INT := 1;
    e INT;
    at_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
BEGIN
    WHILE i <= total LOOP
        e := i;
        WHILE e < total AND (kinds[e + 1] >= 14) = (kinds[i] >= 14) LOOP
            e := e + 1;
        END LOOP;
        IF kinds[i] < 14 THEN
            RETURN QUERY SELECT * FROM {prefix}apply_entity_messages(
                kinds[i:e], ids[i:e], t1[i:e], t2[i:e], t3[i:e], t4[i:e], t5[i:e], n1[i:e],
                n2[i:e], blobs[i:e]);
        ELSE
            FOR j IN i .. e LOOP
                CASE kinds[j]
                WHEN 14 THEN
                    INSERT INTO {prefix}queue_items (queue, id, payload, token, offered_ms)
                    VALUES (t1[j], t2[j], blobs[j], t3[j], at_ms)
                    ON CONFLICT DO NOTHING;
                -- `coalesce(done_ms, -1) = -1` rather than `done_ms IS NULL`: the planner
                -- could then prove the pending index's predicate and, without statistics,
                -- scan every pending item of the queue instead of looking the key up.
                WHEN 15 THEN
                    UPDATE {prefix}queue_items q
                    SET claimed_ms = n2[j], attempts = q.attempts + 1
                    WHERE q.queue = t1[j] AND q.id = t2[j] AND coalesce(q.done_ms, -1) = -1
                      AND (q.claimed_ms IS NULL OR q.claimed_ms <= n2[j] - n1[j]);
                WHEN 16 THEN
                    UPDATE {prefix}queue_items q SET done_ms = at_ms, claimed_ms = NULL
                    WHERE q.queue = t1[j] AND q.id = t2[j] AND coalesce(q.done_ms, -1) = -1;
                WHEN 17 THEN
                    UPDATE {prefix}queue_items q SET claimed_ms = n2[j]
                    WHERE q.queue = t1[j] AND q.id = t2[j] AND coalesce(q.done_ms, -1) = -1
                      AND q.claimed_ms = n1[j];
                END CASE;
                outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
                found_no := NULL;
                found_result := NULL;
                RETURN NEXT;
            END LOOP;
        END IF;
        i := e + 1;
    END LOOP;
END
$$;

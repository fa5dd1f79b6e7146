-- Writes that leave the index of random ids alone once an execution is known.
--
-- 1. Status changes become HOT updates. A status change used to update an indexed column (the
--    index on `status`), so each one wrote a new entry into every index of the table, among them
--    a random page of the primary key on `id`. That index goes; the executions that are not
--    complete are listed in `{prefix}active` instead, by number, which `apply` keeps: a start
--    adds its execution at the right edge, completing removes it. Executions leave room on each
--    page for the new versions of their rows, so an update stays on its page and writes no
--    index entry. Half of it: executions started together (on the same pages) tend to change
--    status together, often in one transaction, whose old row versions cannot be pruned before
--    it commits; measured with the engine's op mix (1,000 in flight, every page's rows completed
--    within a transaction or two), fillfactor 85 made 33% of status updates HOT, 60 made 80%,
--    50 made 97% (and, without vacuum, the table was no larger: non-HOT versions go to new
--    pages, HOT ones to the room left on the old). Pages written before this migration stay
--    full; their executions are mostly complete, and a complete execution is never updated
--    again.
-- 2. `apply` takes the number of each op's execution where the writer knows it (`nos`, NULL
--    where it does not) and goes straight to the row or the journal by number; it answers the
--    number of every execution it created or found, which the writer then remembers.

CREATE TABLE {prefix}active (no BIGINT PRIMARY KEY);
INSERT INTO {prefix}active (no)
SELECT no FROM {prefix}executions WHERE status <> 'complete' ORDER BY no;

DROP INDEX {prefix}executions_status;
ALTER TABLE {prefix}executions SET (fillfactor = 50);

DROP FUNCTION {prefix}apply(SMALLINT[], TEXT[], TEXT[], BIGINT[], BYTEA[], TEXT[], BIGINT);

-- The ops come as parallel arrays, op i being
--   kinds[i]  ids[i]        nos[i]  names[i]  nums[i]  blobs[i]  parents[i]
--   0 start   id            no?     workflow  -        payload   parent
--   1 append  id            no?     key       seq      value     -
--   2 deferred id           no?     name      -        value     -
--   3 status  id            no?     status    -        result    -
--   4 interrupt id          no?     -         -        -         -
--   5 timer   execution_id  no?     name      due_ms   -         -
--   6 untimer execution_id  -       name      -        -         -
-- where `no?` is the execution's number if the caller knows it (it must then be right: the
-- writer only passes numbers of committed executions, which are never deleted), else NULL. The
-- rows come back in op order, one per op: `outcome` 0 (false: nothing changed), 1 (true; for a
-- start, created), 2 (unknown execution, where that differs from false), 3 (a start found the
-- execution: the `found_` columns hold it); `found_no` is the number of the op's execution when
-- it exists (NULL for an unknown one, and for untimer, which never looks). Semantics are the
-- store's: first write wins, a complete execution's status and result are final, completing one
-- drops its timers.
CREATE FUNCTION {prefix}apply(
    kinds SMALLINT[],
    ids TEXT[],
    nos BIGINT[],
    names TEXT[],
    nums BIGINT[],
    blobs BYTEA[],
    parents TEXT[],
    now_ms BIGINT
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
    n BIGINT;
    stored_id TEXT;
BEGIN
    FOR i IN 1 .. coalesce(array_length(kinds, 1), 0) LOOP
        outcome := NULL;
        found_workflow := NULL;
        found_payload := NULL;
        found_parent := NULL;
        found_status := NULL;
        found_result := NULL;
        found_interrupted := NULL;
        n := nos[i];
        -- An op on an execution the caller does not know finds it by id, once.
        IF n IS NULL AND kinds[i] BETWEEN 1 AND 5 THEN
            SELECT e.no INTO n FROM {prefix}executions e WHERE e.id = ids[i];
        END IF;
        CASE kinds[i]
        WHEN 0 THEN
            IF n IS NULL THEN
                INSERT INTO {prefix}executions (id, workflow, payload, parent, status, result,
                                                interrupted, created_ms, updated_ms)
                VALUES (ids[i], names[i], blobs[i], parents[i], 'running', NULL, FALSE, now_ms,
                        now_ms)
                ON CONFLICT DO NOTHING
                RETURNING no INTO n;
                IF FOUND THEN
                    INSERT INTO {prefix}active (no) VALUES (n);
                    outcome := 1;
                END IF;
            END IF;
            IF outcome IS NULL THEN
                IF n IS NULL THEN
                    SELECT e.no, e.id, e.workflow, e.payload, e.parent, e.status, e.result,
                           e.interrupted
                    INTO n, stored_id, found_workflow, found_payload, found_parent, found_status,
                         found_result, found_interrupted
                    FROM {prefix}executions e WHERE e.id = ids[i];
                ELSE
                    SELECT e.id, e.workflow, e.payload, e.parent, e.status, e.result,
                           e.interrupted
                    INTO stored_id, found_workflow, found_payload, found_parent, found_status,
                         found_result, found_interrupted
                    FROM {prefix}executions e WHERE e.no = n;
                END IF;
                IF stored_id IS DISTINCT FROM ids[i] THEN
                    RAISE EXCEPTION 'execution % neither inserted nor found as number %',
                        ids[i], n;
                END IF;
                outcome := 3;
            END IF;
        WHEN 1 THEN
            IF n IS NULL THEN
                outcome := 0;
            ELSE
                INSERT INTO {prefix}journal (execution_no, key, seq, value)
                VALUES (n, names[i], nums[i], blobs[i])
                ON CONFLICT DO NOTHING;
                outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
            END IF;
        WHEN 2 THEN
            IF n IS NULL THEN
                outcome := 2;
            ELSE
                INSERT INTO {prefix}deferreds (execution_no, name, value)
                VALUES (n, names[i], blobs[i])
                ON CONFLICT DO NOTHING;
                outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
            END IF;
        WHEN 3 THEN
            IF n IS NULL THEN
                outcome := 0;
            ELSE
                UPDATE {prefix}executions e
                SET status = names[i], result = blobs[i], updated_ms = now_ms
                WHERE e.no = n AND e.status <> 'complete';
                IF FOUND THEN
                    outcome := 1;
                    IF names[i] = 'complete' THEN
                        DELETE FROM {prefix}active a WHERE a.no = n;
                        DELETE FROM {prefix}timers t WHERE t.execution_id = ids[i];
                    END IF;
                ELSE
                    outcome := 0;
                END IF;
            END IF;
        WHEN 4 THEN
            IF n IS NULL THEN
                outcome := 2;
            ELSE
                UPDATE {prefix}executions e SET interrupted = TRUE, updated_ms = now_ms
                WHERE e.no = n AND e.status <> 'complete';
                outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
            END IF;
        WHEN 5 THEN
            IF n IS NULL THEN
                outcome := 0;
            ELSE
                INSERT INTO {prefix}timers (execution_id, name, due_ms)
                VALUES (ids[i], names[i], nums[i])
                ON CONFLICT DO NOTHING;
                outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
            END IF;
        WHEN 6 THEN
            DELETE FROM {prefix}timers t WHERE t.execution_id = ids[i] AND t.name = names[i];
            outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
        END CASE;
        found_no := n;
        RETURN NEXT;
    END LOOP;
END
$$;

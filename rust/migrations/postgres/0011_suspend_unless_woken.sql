-- A runner's run that suspends must not overwrite the running mark of a wake-up from another
-- process that committed meanwhile (a deferred completed by a webhook on another machine): the
-- owner would leave the execution suspended with a result it never saw, and after its SIGKILL
-- no listing of running executions would find it. `Op::Suspend` (kind 18) carries how many
-- deferred results its run knew; it suspends only if the execution holds no more (see
-- `rust/src/store/op.rs`). A kind of its own, so that the other ops' statements, a single
-- engine's every commit, stay as they were (a condition added to the status update cost 18%
-- of a single engine's no-step workflows in flight).
CREATE OR REPLACE FUNCTION {prefix}apply(
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
        IF n IS NULL AND (kinds[i] BETWEEN 1 AND 5 OR kinds[i] = 18) THEN
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
        WHEN 18 THEN
            -- Suspend (`Op::Suspend`): only if the execution holds no more deferred results
            -- than the run knew (`nums[i]`). The row is locked first and counted in a
            -- statement of its own: a completion committing meanwhile (it inserts the
            -- deferred, then marks the row running) is then either counted or ordered after
            -- this update.
            IF n IS NULL THEN
                outcome := 0;
            ELSE
                PERFORM 1 FROM {prefix}executions e WHERE e.no = n FOR UPDATE;
                IF (SELECT count(*) FROM {prefix}deferreds d WHERE d.execution_no = n)
                   > nums[i] THEN
                    outcome := 0;
                ELSE
                    UPDATE {prefix}executions e
                    SET status = 'suspended', result = blobs[i], updated_ms = now_ms
                    WHERE e.no = n AND e.status <> 'complete';
                    outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
                END IF;
            END IF;
        END CASE;
        found_no := n;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Entity messages (Effect's cluster_messages / cluster_replies, adapted) and entity state.
--
-- A persisted request is a row of `messages` until its final reply is saved in `replies`, when
-- it becomes `processed`. Ids are snowflakes, so id order is save order (per sender exactly,
-- across senders within their clocks' skew); `message_key` is the dedup key (Effect's primary
-- key string, hashed past 255 characters). `last_read` is the instant of its claim (ms), NULL
-- when unclaimed; `deliver_at` holds it back until then.

CREATE TABLE {prefix}messages (
    id BIGINT PRIMARY KEY,
    message_key TEXT UNIQUE,
    shard_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    payload BYTEA NOT NULL,
    processed BOOLEAN NOT NULL DEFAULT FALSE,
    last_read BIGINT,
    deliver_at BIGINT
);
-- What a read of unprocessed requests walks, in save order; processed rows leave it, so it
-- stays as small as the requests in flight however many were ever saved.
CREATE INDEX {prefix}messages_unprocessed ON {prefix}messages (id) WHERE NOT processed;

CREATE TABLE {prefix}replies (
    request_id BIGINT PRIMARY KEY,
    payload BYTEA NOT NULL
);

CREATE TABLE {prefix}entity_state (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (entity_type, entity_id)
);

-- The message ops of a commit, as parallel arrays, op i being
--   kinds[i]          ids[i]       t1[i]   t2[i]        t3[i]      t4[i]  t5[i]  n1[i]       n2[i]       blobs[i]
--   7 request         request id   shard   entity_type  entity_id  tag    key    deliver_at  claimed_ms  payload
--   8 reply           request id   -       -            -          -      -      -           -           value
--   9 entity_state    -            -       entity_type  entity_id  -      -      -           -           value
--   10 clear_replies  request id
--   11 unclaim        request id
--   12 claim          request id   -       -            -          -      -      claim_ms    claimed_ms  -
--   13 reset_claims   -            shards (separated by U+001F; NULL: every shard)
-- answered in op order, one row each: `outcome` 0 (false), 1 (true; a request saved), 4 (a
-- request found stored: `found_no` its id, `found_result` its reply). Semantics are the
-- store's (see rust/src/store/messages.rs).
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
    changed BIGINT[];
BEGIN
    -- The ops go in runs of one kind, in order. Saves, replies and states, the hot path, are
    -- applied a run at a time by set-based statements, each answering as if its ops were
    -- applied one after another; the others one by one.
    WHILE i <= total LOOP
        e := i;
        WHILE e < total AND kinds[e + 1] = kinds[i] LOOP
            e := e + 1;
        END LOOP;
        CASE kinds[i]
        WHEN 7 THEN
            -- The first row of each id and key not stored yet is saved (ON CONFLICT skips the
            -- others, in input order); every other row is a duplicate of what its id or key
            -- names, found once the insert is visible.
            WITH ins AS (
                INSERT INTO {prefix}messages (id, message_key, shard_id, entity_type, entity_id,
                                              tag, payload, last_read, deliver_at)
                SELECT u.id, u.k, u.shard, u.et, u.eid, u.tag, u.payload, u.claimed, u.deliver_at
                FROM unnest(ids[i:e], t1[i:e], t2[i:e], t3[i:e], t4[i:e], t5[i:e], n1[i:e],
                            n2[i:e], blobs[i:e]) WITH ORDINALITY
                    AS u(id, shard, et, eid, tag, k, deliver_at, claimed, payload, ord)
                ORDER BY u.ord
                ON CONFLICT DO NOTHING
                RETURNING id)
            SELECT array_agg(ins.id) INTO changed FROM ins;
            -- Only duplicates look up what they duplicate.
            RETURN QUERY
            WITH s AS (
                SELECT u.id, u.k, u.ord,
                       (x.id IS NOT NULL
                        AND row_number() OVER (PARTITION BY u.id ORDER BY u.ord) = 1) AS saved
                FROM unnest(ids[i:e], t5[i:e]) WITH ORDINALITY AS u(id, k, ord)
                LEFT JOIN unnest(changed) AS x(id) ON x.id = u.id)
            SELECT a.outcome, a.found_no, NULL::TEXT, NULL::BYTEA, NULL::TEXT, NULL::TEXT,
                   a.found_result, NULL::BOOLEAN
            FROM (
                SELECT s.ord, 1::SMALLINT AS outcome, NULL::BIGINT AS found_no,
                       NULL::BYTEA AS found_result
                FROM s WHERE s.saved
                UNION ALL
                SELECT s.ord, 4::SMALLINT, o.id, r.payload
                FROM s
                CROSS JOIN LATERAL (
                    SELECT coalesce(
                        (SELECT m.id FROM {prefix}messages m WHERE m.id = s.id),
                        (SELECT m.id FROM {prefix}messages m WHERE m.message_key = s.k)) AS id
                ) o
                LEFT JOIN {prefix}replies r ON r.request_id = o.id
                WHERE NOT s.saved
            ) a
            ORDER BY a.ord;
        WHEN 8 THEN
            -- The first reply of each request not processed yet wins.
            WITH firsts AS (
                SELECT DISTINCT ON (u.id) u.id, u.payload
                FROM unnest(ids[i:e], blobs[i:e]) WITH ORDINALITY AS u(id, payload, ord)
                ORDER BY u.id, u.ord),
            done AS (
                UPDATE {prefix}messages m SET processed = TRUE, last_read = NULL
                FROM firsts f WHERE m.id = f.id AND NOT m.processed
                RETURNING m.id),
            stored AS (
                INSERT INTO {prefix}replies (request_id, payload)
                SELECT f.id, f.payload FROM firsts f JOIN done d ON d.id = f.id
                RETURNING request_id)
            SELECT array_agg(stored.request_id) INTO changed FROM stored;
            RETURN QUERY
            SELECT CASE WHEN x.id IS NOT NULL
                        AND row_number() OVER (PARTITION BY u.id ORDER BY u.ord) = 1
                        THEN 1::SMALLINT ELSE 0::SMALLINT END,
                   NULL::BIGINT, NULL::TEXT, NULL::BYTEA, NULL::TEXT, NULL::TEXT, NULL::BYTEA,
                   NULL::BOOLEAN
            FROM unnest(ids[i:e]) WITH ORDINALITY AS u(id, ord)
            LEFT JOIN unnest(changed) AS x(id) ON x.id = u.id
            ORDER BY u.ord;
        WHEN 9 THEN
            -- The last state of each instance wins.
            INSERT INTO {prefix}entity_state (entity_type, entity_id, value)
            SELECT DISTINCT ON (u.et, u.eid) u.et, u.eid, u.value
            FROM unnest(t2[i:e], t3[i:e], blobs[i:e]) WITH ORDINALITY AS u(et, eid, value, ord)
            ORDER BY u.et, u.eid, u.ord DESC
            ON CONFLICT (entity_type, entity_id) DO UPDATE SET value = excluded.value;
            RETURN QUERY
            SELECT 1::SMALLINT, NULL::BIGINT, NULL::TEXT, NULL::BYTEA, NULL::TEXT, NULL::TEXT,
                   NULL::BYTEA, NULL::BOOLEAN
            FROM generate_series(i, e);
        ELSE
            FOR j IN i .. e LOOP
                outcome := NULL;
                found_no := NULL;
                found_result := NULL;
                CASE kinds[j]
                WHEN 10 THEN
                    DELETE FROM {prefix}replies r WHERE r.request_id = ids[j];
                    UPDATE {prefix}messages m SET processed = FALSE, last_read = NULL
                    WHERE m.id = ids[j];
                    outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
                WHEN 11 THEN
                    UPDATE {prefix}messages m SET last_read = NULL
                    WHERE m.id = ids[j] AND NOT m.processed;
                    outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
                WHEN 12 THEN
                    UPDATE {prefix}messages m SET last_read = n2[j]
                    WHERE m.id = ids[j] AND NOT m.processed
                      AND (m.last_read IS NULL OR m.last_read <= n2[j] - n1[j]);
                    outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
                WHEN 13 THEN
                    UPDATE {prefix}messages m SET last_read = NULL
                    WHERE NOT m.processed AND m.last_read IS NOT NULL
                      AND (t1[j] IS NULL
                           OR m.shard_id = ANY (string_to_array(t1[j], chr(31))));
                    outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
                END CASE;
                RETURN NEXT;
            END LOOP;
        END CASE;
        i := e + 1;
    END LOOP;
END
$$;

-- `apply_fenced` also takes the message ops: the journal's results come first, then the
-- messages', each in op order. The two sets touch different tables, so applying one before
-- the other within the transaction changes nothing either sees.
DROP FUNCTION {prefix}apply_fenced(SMALLINT[], TEXT[], BIGINT[], TEXT[], BIGINT[], BYTEA[],
                                   TEXT[], BIGINT, TEXT[], BIGINT[]);
CREATE FUNCTION {prefix}apply_fenced(
    kinds SMALLINT[],
    ids TEXT[],
    nos BIGINT[],
    names TEXT[],
    nums BIGINT[],
    blobs BYTEA[],
    parents TEXT[],
    now_ms BIGINT,
    fence_names TEXT[],
    fence_epochs BIGINT[],
    m_kinds SMALLINT[],
    m_ids BIGINT[],
    m_t1 TEXT[],
    m_t2 TEXT[],
    m_t3 TEXT[],
    m_t4 TEXT[],
    m_t5 TEXT[],
    m_n1 BIGINT[],
    m_n2 BIGINT[],
    m_blobs BYTEA[]
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
BEGIN
    FOR i IN 1 .. coalesce(array_length(fence_names, 1), 0) LOOP
        PERFORM 1 FROM {prefix}leases l
        WHERE l.name = fence_names[i] AND l.epoch = fence_epochs[i] AND l.expires_at > now()
        FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'lease % is not held at epoch %', fence_names[i], fence_epochs[i]
                USING ERRCODE = 'PLF01';
        END IF;
    END LOOP;
    IF coalesce(array_length(kinds, 1), 0) > 0 THEN
        RETURN QUERY SELECT * FROM {prefix}apply(kinds, ids, nos, names, nums, blobs, parents,
                                                 now_ms);
    END IF;
    IF coalesce(array_length(m_kinds, 1), 0) > 0 THEN
        RETURN QUERY SELECT * FROM {prefix}apply_messages(m_kinds, m_ids, m_t1, m_t2, m_t3,
                                                          m_t4, m_t5, m_n1, m_n2, m_blobs);
    END IF;
END
$$;

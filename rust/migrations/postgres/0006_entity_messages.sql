-- Entity messages (Effect's cluster_messages / cluster_replies, adapted) and entity state.
--
-- A persisted request is a row of `messages` until its final reply is saved in `replies`, when
-- it becomes `processed`. `seq` is save order; `message_key` is the dedup key (Effect's primary
-- key string, hashed past 255 characters). `last_read` is the instant of its claim (ms), NULL
-- when unclaimed; `deliver_at` holds it back until then.

CREATE TABLE {prefix}messages (
    id BIGINT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
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
CREATE INDEX {prefix}messages_unprocessed ON {prefix}messages (seq) WHERE NOT processed;

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
    original BIGINT;
BEGIN
    FOR i IN 1 .. coalesce(array_length(kinds, 1), 0) LOOP
        outcome := NULL;
        found_no := NULL;
        found_result := NULL;
        CASE kinds[i]
        WHEN 7 THEN
            SELECT m.id INTO original FROM {prefix}messages m WHERE m.id = ids[i];
            IF NOT FOUND THEN
                INSERT INTO {prefix}messages (id, message_key, shard_id, entity_type, entity_id,
                                              tag, payload, last_read, deliver_at)
                VALUES (ids[i], t5[i], t1[i], t2[i], t3[i], t4[i], blobs[i], n2[i], n1[i])
                ON CONFLICT DO NOTHING;
                IF FOUND THEN
                    outcome := 1;
                ELSE
                    SELECT m.id INTO original FROM {prefix}messages m
                    WHERE m.message_key = t5[i] OR m.id = ids[i] LIMIT 1;
                END IF;
            END IF;
            IF outcome IS NULL THEN
                IF original IS NULL THEN
                    RAISE EXCEPTION 'request % neither saved nor found', ids[i];
                END IF;
                outcome := 4;
                found_no := original;
                SELECT r.payload INTO found_result FROM {prefix}replies r
                WHERE r.request_id = original;
            END IF;
        WHEN 8 THEN
            UPDATE {prefix}messages m SET processed = TRUE, last_read = NULL
            WHERE m.id = ids[i] AND NOT m.processed;
            IF FOUND THEN
                INSERT INTO {prefix}replies (request_id, payload) VALUES (ids[i], blobs[i]);
                outcome := 1;
            ELSE
                outcome := 0;
            END IF;
        WHEN 9 THEN
            INSERT INTO {prefix}entity_state (entity_type, entity_id, value)
            VALUES (t2[i], t3[i], blobs[i])
            ON CONFLICT (entity_type, entity_id) DO UPDATE SET value = excluded.value;
            outcome := 1;
        WHEN 10 THEN
            DELETE FROM {prefix}replies r WHERE r.request_id = ids[i];
            UPDATE {prefix}messages m SET processed = FALSE, last_read = NULL
            WHERE m.id = ids[i];
            outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
        WHEN 11 THEN
            UPDATE {prefix}messages m SET last_read = NULL
            WHERE m.id = ids[i] AND NOT m.processed;
            outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
        WHEN 12 THEN
            UPDATE {prefix}messages m SET last_read = n2[i]
            WHERE m.id = ids[i] AND NOT m.processed
              AND (m.last_read IS NULL OR m.last_read <= n2[i] - n1[i]);
            outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
        WHEN 13 THEN
            UPDATE {prefix}messages m SET last_read = NULL
            WHERE NOT m.processed AND m.last_read IS NOT NULL
              AND (t1[i] IS NULL OR m.shard_id = ANY (string_to_array(t1[i], chr(31))));
            outcome := CASE WHEN FOUND THEN 1 ELSE 0 END;
        END CASE;
        RETURN NEXT;
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

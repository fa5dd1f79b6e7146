-- Fenced leases: a claim on (part of) the database that the database checks inside every commit
-- of its holder (see `rust/src/store/sql/lease.rs`).
--
-- A lease is held at an epoch, which grows by one each time a process acquires it, until
-- `expires_at` (the database's clock) unless renewed. The single engine holds the lease
-- `engine`; runners of a cluster hold one per shard.

CREATE TABLE {prefix}leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- `apply`, after checking that every lease in (fence_names, fence_epochs) is held at that epoch
-- and has not expired; otherwise the whole call fails with SQLSTATE PLF01 and nothing is
-- written. `FOR SHARE` keeps each lease row from being taken over until this transaction ends,
-- so a takeover is ordered after a commit it races, never between its check and its commit.
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
    fence_epochs BIGINT[]
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
    RETURN QUERY SELECT * FROM {prefix}apply(kinds, ids, nos, names, nums, blobs, parents, now_ms);
END
$$;

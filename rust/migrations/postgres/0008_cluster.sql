-- A cluster of runners on one database (see `rust/src/store/sql/runners.rs` and
-- `rust/src/cluster/sharding.rs`).
--
-- `runners` is Effect's `cluster_runners` with one column more: `lock_key`, the key of the
-- session advisory lock (`pg_try_advisory_lock(<namespace>, lock_key)`) the runner holds while
-- its process lives. Peers read `pg_locks` for it, so a runner killed with SIGKILL leaves every
-- ring as soon as the server sees its session end, instead of when its heartbeat expires.
--
-- Shard leases are rows of `leases` named `shard/<group>:<id>`, held by `<address>/<lock_key>`
-- (so that a new process at the same address is a different holder), and checked inside every
-- commit of their holder (`apply_fenced`).

CREATE TABLE {prefix}runners (
    machine_id SERIAL PRIMARY KEY,
    address VARCHAR(255) NOT NULL UNIQUE,
    runner TEXT NOT NULL,
    healthy BOOLEAN NOT NULL DEFAULT TRUE,
    last_heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),
    lock_key BIGINT NOT NULL DEFAULT 0
);

-- One notification per `items` chunk that fits a NOTIFY payload (8000 bytes), items joined by
-- commas.
CREATE FUNCTION {prefix}notify_chunks(channel TEXT, items TEXT[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    payload TEXT := '';
    item TEXT;
BEGIN
    FOREACH item IN ARRAY coalesce(items, '{}'::TEXT[]) LOOP
        IF payload <> '' AND length(payload) + length(item) >= 7900 THEN
            PERFORM pg_notify(channel, payload);
            payload := '';
        END IF;
        payload := CASE WHEN payload = '' THEN item ELSE payload || ',' || item END;
    END LOOP;
    IF payload <> '' THEN
        PERFORM pg_notify(channel, payload);
    END IF;
END
$$;

-- The writer of a cluster's process calls `notify_chunks` after each commit: on
-- `{prefix}requests` the distinct shards of requests it saved unclaimed, on `{prefix}replies` the
-- ids of final replies it saved. (Not a trigger: a statement trigger with a transition table
-- costs every commit, a single engine's too.)

-- A runner joining, leaving or changing health: every runner reads the ring again at once.
CREATE FUNCTION {prefix}notify_runners() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{prefix}runners', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER {prefix}runners_changed AFTER INSERT OR DELETE OR UPDATE OF healthy, lock_key
ON {prefix}runners FOR EACH STATEMENT EXECUTE FUNCTION {prefix}notify_runners();

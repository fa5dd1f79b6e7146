-- The journal of plait's workflow executions. `{prefix}` is replaced by the store's table
-- prefix (default `plait_`) before this runs.

CREATE TABLE {prefix}executions (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    payload BYTEA NOT NULL,
    parent TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'suspended', 'complete')),
    result BYTEA,
    interrupted BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- Step results; `ord` gives write order within an execution (one writer assigns it).
CREATE TABLE {prefix}journal (
    execution_id TEXT NOT NULL,
    key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    value BYTEA NOT NULL,
    ord BIGSERIAL NOT NULL,
    PRIMARY KEY (execution_id, key)
);

-- Deferred results, in the order they completed (`ord`, as above).
CREATE TABLE {prefix}deferreds (
    execution_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value BYTEA NOT NULL,
    ord BIGSERIAL NOT NULL,
    PRIMARY KEY (execution_id, name)
);

CREATE TABLE {prefix}timers (
    execution_id TEXT NOT NULL,
    name TEXT NOT NULL,
    due_ms BIGINT NOT NULL,
    PRIMARY KEY (execution_id, name)
);

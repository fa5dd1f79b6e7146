-- The journal of plait's workflow executions. `{prefix}` is replaced by the store's table
-- prefix (default `plait_`) before this runs.

CREATE TABLE {prefix}executions (
    id TEXT NOT NULL PRIMARY KEY,
    workflow TEXT NOT NULL,
    payload BLOB NOT NULL,
    parent TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'suspended', 'complete')),
    result BLOB,
    interrupted BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);

-- Step results. `ord` is the rowid: each new row gets one above the largest, so ordering by it
-- gives write order within an execution.
CREATE TABLE {prefix}journal (
    ord INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    value BLOB NOT NULL,
    UNIQUE (execution_id, key)
);

-- Deferred results, in the order they completed (`ord`, as above).
CREATE TABLE {prefix}deferreds (
    ord INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    UNIQUE (execution_id, name)
);

CREATE TABLE {prefix}timers (
    execution_id TEXT NOT NULL,
    name TEXT NOT NULL,
    due_ms INTEGER NOT NULL,
    PRIMARY KEY (execution_id, name)
) WITHOUT ROWID;

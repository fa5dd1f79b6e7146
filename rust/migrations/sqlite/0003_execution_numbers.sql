-- Executions get an integer key that grows with insertion order (`no`, the rowid), and the
-- journal and deferred results are keyed by it instead of by the execution id. Ids are random
-- hex, so keyed by id every insert landed on a random page of a B-tree far larger than the page
-- cache; keyed by `no`, the rows of the executions in flight sit together at the right edge.
-- Only the index of ids still takes a random insert, one per execution. SQLite cannot change a
-- table's key in place: each table is rebuilt, its rows copied in their old order.

CREATE TABLE {prefix}executions_v3 (
    no INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    workflow TEXT NOT NULL,
    payload BLOB NOT NULL,
    parent TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'suspended', 'complete')),
    result BLOB,
    interrupted BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
INSERT INTO {prefix}executions_v3 (id, workflow, payload, parent, status, result, interrupted,
                                   created_ms, updated_ms)
SELECT id, workflow, payload, parent, status, result, interrupted, created_ms, updated_ms
FROM {prefix}executions
ORDER BY rowid;

-- `ord` stays the rowid, so write order carries over. Rows of an execution the store never
-- held cannot exist (every insert checked), and could not be read: they are not copied.
CREATE TABLE {prefix}journal_v3 (
    ord INTEGER PRIMARY KEY,
    execution_no INTEGER NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    value BLOB NOT NULL,
    UNIQUE (execution_no, key)
);
INSERT INTO {prefix}journal_v3 (ord, execution_no, key, seq, value)
SELECT j.ord, e.no, j.key, j.seq, j.value
FROM {prefix}journal j JOIN {prefix}executions_v3 e ON e.id = j.execution_id
ORDER BY j.ord;

CREATE TABLE {prefix}deferreds_v3 (
    ord INTEGER PRIMARY KEY,
    execution_no INTEGER NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    UNIQUE (execution_no, name)
);
INSERT INTO {prefix}deferreds_v3 (ord, execution_no, name, value)
SELECT d.ord, e.no, d.name, d.value
FROM {prefix}deferreds d JOIN {prefix}executions_v3 e ON e.id = d.execution_id
ORDER BY d.ord;

DROP TABLE {prefix}journal;
DROP TABLE {prefix}deferreds;
DROP TABLE {prefix}executions;
ALTER TABLE {prefix}executions_v3 RENAME TO {prefix}executions;
ALTER TABLE {prefix}journal_v3 RENAME TO {prefix}journal;
ALTER TABLE {prefix}deferreds_v3 RENAME TO {prefix}deferreds;
-- Dropped with the old table.
CREATE INDEX {prefix}executions_status ON {prefix}executions (status);

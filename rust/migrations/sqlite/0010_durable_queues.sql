-- Durable queue items (Effect's PersistedQueue, behind DurableQueue).
--
-- An item is stored once per (queue, id); `no` (the rowid) is offer order. `claimed_ms` is the
-- instant of its last take, void after the taker's claim timeout; `attempts` counts takes.
-- `done_ms` set means done: never taken again. Pending items of a queue are a range of the
-- partial index, which done items leave.

CREATE TABLE {prefix}queue_items (
    no INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    payload BLOB NOT NULL,
    token TEXT,
    offered_ms INTEGER NOT NULL,
    claimed_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_ms INTEGER
);
CREATE UNIQUE INDEX {prefix}queue_items_id ON {prefix}queue_items (queue, id);
CREATE INDEX {prefix}queue_items_pending ON {prefix}queue_items (queue, no)
    WHERE done_ms IS NULL;

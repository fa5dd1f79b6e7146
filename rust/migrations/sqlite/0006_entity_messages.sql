-- Entity messages (Effect's cluster_messages / cluster_replies, adapted) and entity state.
--
-- A persisted request is a row of `messages` until its final reply is saved in `replies`, when
-- it becomes `processed`. Ids are snowflakes, so id order is save order (per sender exactly);
-- `seq` (the rowid) keeps inserts at the right edge; `message_key` is the dedup key (Effect's
-- primary key string, hashed past 255 characters). `last_read` is the instant of its
-- claim (ms), NULL when unclaimed; `deliver_at` holds it back until then.

CREATE TABLE {prefix}messages (
    seq INTEGER PRIMARY KEY,
    id INTEGER NOT NULL UNIQUE,
    message_key TEXT UNIQUE,
    shard_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    payload BLOB NOT NULL,
    processed BOOLEAN NOT NULL DEFAULT FALSE,
    last_read INTEGER,
    deliver_at INTEGER
);
-- What a read of unprocessed requests walks, in save order; processed rows leave it, so it
-- stays as small as the requests in flight however many were ever saved.
CREATE INDEX {prefix}messages_unprocessed ON {prefix}messages (id) WHERE NOT processed;

CREATE TABLE {prefix}replies (
    request_id INTEGER PRIMARY KEY,
    payload BLOB NOT NULL
);

CREATE TABLE {prefix}entity_state (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (entity_type, entity_id)
) WITHOUT ROWID;

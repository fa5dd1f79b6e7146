-- Listing executions for operators (newest first, by workflow, a page at a time), and the time
-- each journal record was stored, for an execution's timeline.
--
-- Neither index holds a column that changes after an execution's start (its status does, and
-- an index on it would end the HOT updates of migration 0004): the executions not complete are
-- found through `{prefix}active`, the complete ones by reading these indexes backwards.
-- (0006 is left to the entity messages' tables.)

CREATE INDEX {prefix}executions_created ON {prefix}executions (created_ms, no);
CREATE INDEX {prefix}executions_workflow ON {prefix}executions (workflow, created_ms, no);

-- Rows stored before this migration have no time (NULL). The time comes from a default, the
-- database's clock at the insert, rather than from `apply`'s `now_ms` (the engine's clock),
-- so that `apply` stays as it is; on one machine, or NTP-synchronised ones, they agree. Added
-- without a default first, then given one: no existing row is rewritten.
ALTER TABLE {prefix}journal ADD COLUMN at_ms BIGINT;
ALTER TABLE {prefix}journal
    ALTER COLUMN at_ms SET DEFAULT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint;
ALTER TABLE {prefix}deferreds ADD COLUMN at_ms BIGINT;
ALTER TABLE {prefix}deferreds
    ALTER COLUMN at_ms SET DEFAULT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint;

-- Listing executions for operators (newest first, by workflow and status, a page at a time),
-- and the time each journal record was stored, for an execution's timeline.
--
-- An index holds the rowid (`no`) after its columns, so each of these orders its executions
-- by (created_ms, no): the listing's order, read backwards from the newest. The one on status
-- replaces the bare index on status, which lookups by status alone use as well.
-- (0004 to 0006 are left to the entity messages' tables.)

CREATE INDEX {prefix}executions_created ON {prefix}executions (created_ms);
CREATE INDEX {prefix}executions_workflow ON {prefix}executions (workflow, created_ms);
CREATE INDEX {prefix}executions_status_created ON {prefix}executions (status, created_ms);
DROP INDEX {prefix}executions_status;

-- Rows stored before this migration have no time (NULL).
ALTER TABLE {prefix}journal ADD COLUMN at_ms INTEGER;
ALTER TABLE {prefix}deferreds ADD COLUMN at_ms INTEGER;

-- Each runner's resident entity instances, as of its last heartbeat: what an operator's view
-- of the cluster shows for every runner (Effect's per-runner entity gauge), not only its own.
ALTER TABLE {prefix}runners ADD COLUMN entities INTEGER NOT NULL DEFAULT 0;

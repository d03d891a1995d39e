-- Work asked for through the admin API with `Prefer: respond-async` (and every GC request), kept
-- here so that any replica can report it and another can finish it when its replica dies.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,              -- 32 hex characters, random
    kind TEXT NOT NULL,                        -- 'prefetch' | 'gc'
    state TEXT NOT NULL,                       -- 'pending' | 'running' | 'succeeded' | 'failed'
    request TEXT NOT NULL,                     -- JSON, as accepted
    progress TEXT,                             -- JSON, updated while running
    result TEXT,                               -- JSON, when succeeded
    error TEXT,                                -- when failed
    owner TEXT,                                -- the replica running it (or that last ran it)
    attempts INTEGER NOT NULL DEFAULT 0,       -- claims so far (more than one: a replica died)
    created_at BIGINT NOT NULL,                -- unix milliseconds
    started_at BIGINT,
    heartbeat_at BIGINT,                       -- the owner's last sign of life
    finished_at BIGINT
);
CREATE INDEX tasks_state ON tasks (state, created_at);
CREATE INDEX tasks_finished_at ON tasks (finished_at);
-- At most one GC task queued or running: requests coalesce into it.
CREATE UNIQUE INDEX tasks_one_active_gc ON tasks (kind) WHERE kind = 'gc' AND state IN ('pending', 'running');

-- Store paths whose closures GC never evicts, pinned through the admin API (pins given in the
-- configuration are not stored: each replica has them from its own configuration).
CREATE TABLE pins (
    store_path TEXT PRIMARY KEY NOT NULL,      -- /nix/store/<hash>-<name>
    created_at BIGINT NOT NULL                 -- unix seconds
);

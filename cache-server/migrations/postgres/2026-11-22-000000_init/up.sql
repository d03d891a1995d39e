-- Narinfos nixcache has accepted from an upstream, as it serves them (re-signed).
CREATE TABLE narinfos (
    hash TEXT PRIMARY KEY NOT NULL,            -- store path hash part (32 chars, nix32)
    store_path TEXT NOT NULL,
    nar_file TEXT NOT NULL,                    -- our NAR file name: <nix32>.nar[.ext]
    upstream_nar_url TEXT NOT NULL,            -- absolute URL of the NAR at the upstream that served it
    narinfo TEXT NOT NULL,                     -- the body served to clients
    nar_size BIGINT NOT NULL,
    file_size BIGINT,
    created_at BIGINT NOT NULL,                -- unix seconds
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX narinfos_nar_file ON narinfos (nar_file);
CREATE INDEX narinfos_last_accessed_at ON narinfos (last_accessed_at);

-- NAR files committed to storage (complete and verified).
CREATE TABLE nars (
    file TEXT PRIMARY KEY NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX nars_last_accessed_at ON nars (last_accessed_at);

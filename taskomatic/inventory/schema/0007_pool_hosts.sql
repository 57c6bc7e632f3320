-- Storage that several hosts see. A pool is 'local' (seen by its one host, storage_pools.host_id)
-- or 'shared' (defined on every host of its home host's cluster; host_id is the host it was
-- created from). pool_hosts records which hosts see which pool: 'active' (started there;
-- placement counts the pool as seen), 'inactive' (defined, not started) or 'failed' (it could not
-- be defined or started there; detail says why). Rows of pools that existed before are derived
-- from their one host.

ALTER TABLE storage_pools ADD COLUMN scope text NOT NULL DEFAULT 'local'
    CHECK (scope IN ('local', 'shared'));
-- The libvirt UUID its create gave the pool (the same on every host of a shared pool).
ALTER TABLE storage_pools ADD COLUMN uuid uuid;

CREATE TABLE pool_hosts (
    pool_id     bigint      NOT NULL REFERENCES storage_pools (id) ON DELETE CASCADE,
    host_id     bigint      NOT NULL REFERENCES hosts (id),
    state       text        NOT NULL CHECK (state IN ('active', 'inactive', 'failed')),
    detail      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, host_id)
);
CREATE INDEX pool_hosts_host_id ON pool_hosts (host_id);

INSERT INTO pool_hosts (pool_id, host_id, state)
    SELECT id, host_id, state FROM storage_pools WHERE state IN ('active', 'inactive');

-- Storage: pools per host, their volumes, and which VM uses (vm_disks) or owns (owner_vm) a
-- volume. A pool row in state 'creating' is the plan-phase reservation of its name by task_id.

CREATE TABLE storage_pools (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    host_id     bigint      NOT NULL REFERENCES hosts (id),
    type        text        NOT NULL CHECK (type IN ('dir', 'netfs', 'logical')),
    path        text        NOT NULL,
    source      jsonb       NOT NULL DEFAULT '{}',
    state       text        NOT NULL DEFAULT 'creating'
                CHECK (state IN ('creating', 'active', 'inactive')),
    autostart   boolean     NOT NULL DEFAULT false,
    capacity    bigint,
    allocation  bigint,
    available   bigint,
    task_id     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (host_id, path)
);

CREATE TABLE storage_volumes (
    id          bigserial   PRIMARY KEY,
    pool_id     bigint      NOT NULL REFERENCES storage_pools (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    format      text        NOT NULL,
    capacity    bigint      NOT NULL CHECK (capacity > 0),
    allocation  bigint,
    path        text,
    owner_vm    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pool_id, name)
);

-- A volume is attached to at most one VM; an attached volume (and so its pool) cannot be removed.
CREATE TABLE vm_disks (
    vm_id       bigint      NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    volume_id   bigint      NOT NULL UNIQUE REFERENCES storage_volumes (id),
    target      text        NOT NULL,
    PRIMARY KEY (vm_id, target)
);

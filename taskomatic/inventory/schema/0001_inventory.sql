-- The inventory: hypervisor hosts, the VMs placed on them, and the capacity reserved by tasks
-- that are still placing a VM. A host's committed load is its VMs plus its reservations.

CREATE TABLE hosts (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    uri         text        NOT NULL UNIQUE,
    state       text        NOT NULL DEFAULT 'up'
                CHECK (state IN ('up', 'maintenance', 'maintenance_failed', 'down')),
    vcpus       integer     NOT NULL CHECK (vcpus > 0),
    memory_mib  bigint      NOT NULL CHECK (memory_mib > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vms (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    uuid        uuid        NOT NULL UNIQUE,
    host_id     bigint      NOT NULL REFERENCES hosts (id),
    vcpus       integer     NOT NULL CHECK (vcpus > 0),
    memory_mib  bigint      NOT NULL CHECK (memory_mib > 0),
    state       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vms_host_id ON vms (host_id);

-- One reservation per task: taken in the task's plan phase, turned into a VM row by its finalize
-- phase, or released by its compensation. vm_name is unique so two tasks cannot create one name.
CREATE TABLE reservations (
    task_id     text        PRIMARY KEY,
    host_id     bigint      NOT NULL REFERENCES hosts (id),
    vm_name     text        NOT NULL UNIQUE,
    vcpus       integer     NOT NULL CHECK (vcpus > 0),
    memory_mib  bigint      NOT NULL CHECK (memory_mib > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_host_id ON reservations (host_id);

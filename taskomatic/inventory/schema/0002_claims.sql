-- Per-resource ordering. A task claims the resources it changes ("vm:web1", "host:h1",
-- "migrate-out:h1"); claims on one resource are served in seq order, at most `capacity` at a time.
-- A task's claims are inserted together under one seq, so every task has one place in a single
-- global order: the task with the lowest seq among those waiting can always run once the current
-- holders finish, and no two tasks can wait on each other (no deadlock).

CREATE TABLE resources (
    name        text        PRIMARY KEY,
    capacity    integer     NOT NULL DEFAULT 1 CHECK (capacity > 0)
);

CREATE SEQUENCE claim_seq;

CREATE TABLE claims (
    task_id     text        NOT NULL,
    resource    text        NOT NULL REFERENCES resources (name),
    seq         bigint      NOT NULL,
    kind        text        NOT NULL DEFAULT '',
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    granted_at  timestamptz,
    PRIMARY KEY (task_id, resource)
);
CREATE INDEX claims_resource_seq ON claims (resource, seq);

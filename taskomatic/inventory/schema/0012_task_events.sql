-- The audit log: each task's story (submitted, steps and undos, waits, end), kept apart from
-- Temporal's history so it outlives the namespace's retention. Rows are written at least once
-- by their writers; ``key`` makes every write idempotent (a retried write adds nothing).
CREATE TABLE task_events (
    id bigserial PRIMARY KEY,                 -- the audit stream's cursor (GET /events?since=)
    key text NOT NULL UNIQUE,                 -- idempotency key, e.g. wf/run/activity/attempt/event
    task_id text NOT NULL,
    kind text NOT NULL,                       -- submitted, step_started, step_finished, step_failed,
                                              -- undo_started, undo_finished, undo_failed, waiting, end
    task_kind text NOT NULL DEFAULT '',       -- CreateVm, ClearHost, ...
    step text,
    attempt integer,
    duration_ms integer,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_events_task ON task_events (task_id, id);
CREATE INDEX task_events_at ON task_events (at);

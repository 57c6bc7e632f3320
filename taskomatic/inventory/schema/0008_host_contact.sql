-- Hosts that stop answering (the worker's host monitor): the state 'non_responsive', and why a
-- host or a VM is in the state it is when the monitor put it there ("no answer for 10 s:
-- keepalive timed out"); NULL when a task or the reconciliation set the state.

ALTER TABLE hosts DROP CONSTRAINT hosts_state_check;
ALTER TABLE hosts ADD CONSTRAINT hosts_state_check
    CHECK (state IN ('up', 'maintenance', 'maintenance_failed', 'down', 'non_responsive'));
ALTER TABLE hosts ADD COLUMN state_reason text;
ALTER TABLE vms ADD COLUMN state_reason text;

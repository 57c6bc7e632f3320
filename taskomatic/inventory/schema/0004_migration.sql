-- Migration between hosts: each host may name the URI its hypervisor receives migration traffic
-- on (e.g. tcp://10.0.0.2), and a VM moved off a host that was being cleared remembers that host
-- (its origin) so that `host restore` can bring it back.

ALTER TABLE hosts ADD COLUMN migration_uri text;
ALTER TABLE vms ADD COLUMN origin_host text;
CREATE INDEX vms_origin_host ON vms (origin_host) WHERE origin_host IS NOT NULL;

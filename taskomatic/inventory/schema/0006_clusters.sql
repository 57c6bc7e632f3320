-- Clusters (oVirt's data center → cluster → host; Nova's host aggregates): every host belongs to
-- one, placement and migration never leave it. A cluster has one hypervisor type (the libvirt
-- driver as virConnectGetType() reports it, lower case: 'test', 'qemu', …), an optional CPU
-- baseline, the overcommit ratios that turn a host's physical CPUs and memory into the capacity
-- placement may use (Nova's initial allocation ratios: 4.0 vCPUs per CPU, 1.0 for memory) and
-- its weigher ('spread': least loaded first; 'pack': most loaded first).
--
-- Existing hosts: their hypervisor type is their URI's driver ('qemu+ssh://…' → 'qemu'). The
-- type of the first registered host (lowest id) gets the cluster 'default'; any other type
-- found gets its own cluster 'default-<type>', so a mixed inventory never puts two kinds of
-- hypervisor in one cluster. Capacities registered before (hosts.vcpus, hosts.memory_mib) stay
-- the explicit capacity they were.
--
-- A host's capacity is either explicit (hosts.vcpus / hosts.memory_mib, given by the operator)
-- or derived: what libvirt reported at `host add` (hosts.cpus, hosts.physical_memory_mib, from
-- virNodeGetInfo) times the cluster's ratio.

CREATE TABLE clusters (
    id                bigserial   PRIMARY KEY,
    name              text        NOT NULL UNIQUE,
    hypervisor_type   text        NOT NULL CHECK (hypervisor_type ~ '^[a-z][a-z0-9_.-]*$'),
    cpu_model         text        NULL,
    vcpu_overcommit   numeric     NOT NULL DEFAULT 4.0 CHECK (vcpu_overcommit > 0),
    memory_overcommit numeric     NOT NULL DEFAULT 1.0 CHECK (memory_overcommit > 0),
    weigher           text        NOT NULL DEFAULT 'spread' CHECK (weigher IN ('spread', 'pack')),
    created_at        timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE hosts ADD COLUMN cluster_id bigint REFERENCES clusters (id);
ALTER TABLE hosts ADD COLUMN cpu_model text;
ALTER TABLE hosts ADD COLUMN cpus integer CHECK (cpus > 0);
ALTER TABLE hosts ADD COLUMN physical_memory_mib bigint CHECK (physical_memory_mib > 0);
ALTER TABLE hosts ALTER COLUMN vcpus DROP NOT NULL;
ALTER TABLE hosts ALTER COLUMN memory_mib DROP NOT NULL;
ALTER TABLE hosts ADD CONSTRAINT hosts_vcpus_known CHECK (vcpus IS NOT NULL OR cpus IS NOT NULL);
ALTER TABLE hosts ADD CONSTRAINT hosts_memory_known
    CHECK (memory_mib IS NOT NULL OR physical_memory_mib IS NOT NULL);

WITH typed AS (
    SELECT id, lower(split_part(split_part(uri, ':', 1), '+', 1)) AS kind FROM hosts
), kinds AS (
    SELECT kind, min(id) AS first FROM typed GROUP BY kind
)
INSERT INTO clusters (name, hypervisor_type)
SELECT CASE WHEN first = (SELECT min(id) FROM hosts) THEN 'default' ELSE 'default-' || kind END,
       kind
FROM kinds;

UPDATE hosts h SET cluster_id = c.id
FROM clusters c
WHERE c.hypervisor_type = lower(split_part(split_part(h.uri, ':', 1), '+', 1));

ALTER TABLE hosts ALTER COLUMN cluster_id SET NOT NULL;
CREATE INDEX hosts_cluster_id ON hosts (cluster_id);

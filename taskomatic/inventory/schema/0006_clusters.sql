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

-- Affinity groups (oVirt's affinity groups, Nova's server groups): VMs of an 'anti-affinity'
-- group never share a host, of a 'soft-anti-affinity' group preferably not, of an 'affinity'
-- group always do. A group is made by the first `vm create --group` naming it. A reservation
-- carries its VM's group, so placements running at once see each other's; placements of one
-- group serialize on its row.
CREATE TABLE affinity_groups (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    policy      text        NOT NULL
                CHECK (policy IN ('anti-affinity', 'soft-anti-affinity', 'affinity')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE vms ADD COLUMN affinity_group_id bigint REFERENCES affinity_groups (id);
ALTER TABLE reservations ADD COLUMN affinity_group_id bigint REFERENCES affinity_groups (id);
CREATE INDEX vms_affinity_group_id ON vms (affinity_group_id);

-- What each host's VMs and reservations use, next to its capacity, kept by triggers:
-- placement's fast path walks an index of it (best host first by the cluster's weigher)
-- instead of summing every host's rows (taskomatic/inventory/placement.py). It is a guide only:
-- the truth is the sum, which placement re-reads under the chosen host's row lock.
CREATE TABLE host_usage (
    host_id       bigint  PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    cluster_id    bigint  NOT NULL,
    name          text    NOT NULL,
    vcpus_total   float8  NOT NULL,
    memory_total  float8  NOT NULL,
    vcpus         bigint  NOT NULL DEFAULT 0,
    memory_mib    bigint  NOT NULL DEFAULT 0,
    memory_share  float8  GENERATED ALWAYS AS (memory_mib / NULLIF(memory_total, 0)) STORED,
    vcpu_share    float8  GENERATED ALWAYS AS (vcpus / NULLIF(vcpus_total, 0)) STORED
);
CREATE INDEX host_usage_spread
    ON host_usage (cluster_id, memory_share, vcpu_share, name COLLATE "C");
CREATE INDEX host_usage_pack
    ON host_usage (cluster_id, memory_share DESC, vcpu_share DESC, name COLLATE "C");

-- A host's capacity as placement uses it: explicit, else libvirt's figure times the ratio.
CREATE FUNCTION track_host_capacity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO host_usage AS u (host_id, cluster_id, name, vcpus_total, memory_total)
    SELECT h.id, h.cluster_id, h.name,
           COALESCE(h.vcpus, floor(h.cpus * c.vcpu_overcommit)),
           COALESCE(h.memory_mib, floor(h.physical_memory_mib * c.memory_overcommit))
    FROM hosts h JOIN clusters c ON c.id = h.cluster_id
    WHERE (TG_TABLE_NAME = 'hosts' AND h.id = NEW.id)
       OR (TG_TABLE_NAME = 'clusters' AND h.cluster_id = NEW.id)
    ON CONFLICT (host_id) DO UPDATE
    SET cluster_id = EXCLUDED.cluster_id, name = EXCLUDED.name,
        vcpus_total = EXCLUDED.vcpus_total, memory_total = EXCLUDED.memory_total;
    RETURN NULL;
END
$$;
CREATE TRIGGER hosts_capacity
    AFTER INSERT OR UPDATE OF cluster_id, name, vcpus, memory_mib, cpus, physical_memory_mib
    ON hosts FOR EACH ROW EXECUTE FUNCTION track_host_capacity();
CREATE TRIGGER clusters_capacity AFTER UPDATE OF vcpu_overcommit, memory_overcommit
    ON clusters FOR EACH ROW EXECUTE FUNCTION track_host_capacity();
UPDATE hosts SET cluster_id = cluster_id;  -- every existing host gets its row
UPDATE host_usage u SET
    vcpus = (SELECT COALESCE(SUM(vcpus), 0) FROM vms WHERE host_id = u.host_id)
          + (SELECT COALESCE(SUM(vcpus), 0) FROM reservations WHERE host_id = u.host_id),
    memory_mib = (SELECT COALESCE(SUM(memory_mib), 0) FROM vms WHERE host_id = u.host_id)
          + (SELECT COALESCE(SUM(memory_mib), 0) FROM reservations WHERE host_id = u.host_id);

CREATE FUNCTION track_host_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE host_usage SET vcpus = vcpus - OLD.vcpus, memory_mib = memory_mib - OLD.memory_mib
        WHERE host_id = OLD.host_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE host_usage SET vcpus = vcpus + NEW.vcpus, memory_mib = memory_mib + NEW.memory_mib
        WHERE host_id = NEW.host_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER vms_host_usage AFTER INSERT OR DELETE OR UPDATE OF host_id, vcpus, memory_mib
    ON vms FOR EACH ROW EXECUTE FUNCTION track_host_usage();
CREATE TRIGGER reservations_host_usage
    AFTER INSERT OR DELETE OR UPDATE OF host_id, vcpus, memory_mib
    ON reservations FOR EACH ROW EXECUTE FUNCTION track_host_usage();

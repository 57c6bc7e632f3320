-- Placement in one round trip (taskomatic/inventory/placement.py): the common placement (a
-- create without an affinity group or pinned host) is one call of reserve_fast inside the
-- caller's transaction; the caller re-runs every filter of taskomatic/placement.py on the
-- exact load it returns before committing, and falls back to the full path (which explains
-- refusals) whenever it does not say 'placed'. The rules stay in taskomatic/placement.py: the
-- SQL only pre-selects by them and the result is checked against them.

-- Each host with its usable capacity (explicit, else libvirt's figure times the cluster's
-- overcommit, as clusters.CAPACITY_COLUMNS), what its VMs use, what the reservations of tasks
-- still placing VMs there hold, and the pools active there: the one host-load query
-- (hosts.read_hosts) and the exact load reserve_fast returns.
CREATE VIEW host_loads AS
    SELECT h.id, h.name, h.uri, h.state, h.state_reason, h.migration_uri, h.hypervisor_id,
           COALESCE(h.vcpus, floor(h.cpus * c.vcpu_overcommit))::int AS vcpus,
           COALESCE(h.memory_mib, floor(h.physical_memory_mib * c.memory_overcommit))::bigint
               AS memory_mib,
           c.name AS cluster, c.hypervisor_type, h.cpu_model, h.cpus, h.physical_memory_mib,
           v.vcpus AS used_vcpus, v.memory_mib AS used_memory_mib, v.n AS vm_count,
           r.vcpus AS reserved_vcpus, r.memory_mib AS reserved_memory_mib,
           ARRAY(SELECT p.name FROM pool_hosts ph JOIN storage_pools p ON p.id = ph.pool_id
                 WHERE ph.host_id = h.id AND ph.state = 'active' ORDER BY p.name) AS pools
    FROM hosts h JOIN clusters c ON c.id = h.cluster_id
    CROSS JOIN LATERAL (
        SELECT COALESCE(SUM(vcpus), 0)::bigint AS vcpus,
               COALESCE(SUM(memory_mib), 0)::bigint AS memory_mib, COUNT(*) AS n
        FROM vms WHERE host_id = h.id) v
    CROSS JOIN LATERAL (
        SELECT COALESCE(SUM(vcpus), 0)::bigint AS vcpus,
               COALESCE(SUM(memory_mib), 0)::bigint AS memory_mib
        FROM reservations WHERE host_id = h.id) r;

-- The pre-selection: among the hosts of cluster p_cluster (NULL: every host; a cluster's hosts
-- all have its hypervisor type) that are up, not in p_exclude and with room for p_vcpus /
-- p_memory by the usage counters (host_usage), the best by p_weigher (spread: least memory
-- used, as a share, then vCPUs; pack: the most; then the name in code-point order, as Python
-- compares it) that no other transaction holds, its hosts row locked FOR UPDATE (SKIP LOCKED:
-- concurrent placements take the next-best host instead of queueing). Returns its id, or NULL.
-- In a cluster it walks host_usage's index for the weigher: its cost does not grow with the
-- number of hosts. The counters are a guide only: the caller re-reads the exact load.
CREATE FUNCTION preselect_host(p_cluster bigint, p_weigher text, p_exclude text[],
                               p_vcpus bigint, p_memory bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    chosen bigint;
BEGIN
    IF p_cluster IS NULL THEN
        SELECT h.id INTO chosen FROM host_usage u JOIN hosts h ON h.id = u.host_id
        WHERE h.state = 'up' AND NOT (h.name = ANY(p_exclude))
          AND u.vcpus_total - u.vcpus >= p_vcpus AND u.memory_total - u.memory_mib >= p_memory
        ORDER BY u.memory_share, u.vcpu_share, u.name COLLATE "C"
        LIMIT 1 FOR UPDATE OF h SKIP LOCKED;
    ELSIF p_weigher = 'pack' THEN
        SELECT h.id INTO chosen FROM host_usage u JOIN hosts h ON h.id = u.host_id
        WHERE u.cluster_id = p_cluster AND h.state = 'up' AND NOT (h.name = ANY(p_exclude))
          AND u.vcpus_total - u.vcpus >= p_vcpus AND u.memory_total - u.memory_mib >= p_memory
        ORDER BY u.cluster_id, u.memory_share DESC, u.vcpu_share DESC, u.name COLLATE "C"
        LIMIT 1 FOR UPDATE OF h SKIP LOCKED;
    ELSE
        SELECT h.id INTO chosen FROM host_usage u JOIN hosts h ON h.id = u.host_id
        WHERE u.cluster_id = p_cluster AND h.state = 'up' AND NOT (h.name = ANY(p_exclude))
          AND u.vcpus_total - u.vcpus >= p_vcpus AND u.memory_total - u.memory_mib >= p_memory
        ORDER BY u.cluster_id, u.memory_share, u.vcpu_share, u.name COLLATE "C"
        LIMIT 1 FOR UPDATE OF h SKIP LOCKED;
    END IF;
    RETURN chosen;
END
$$;

-- A create's reservation in one call (no affinity group, no pinned host): the name is free
-- (no VM, no reservation of it, none held by p_task), the cluster p_cluster (NULL: any) is
-- known, preselect_host locks the best host, its exact load is read under that lock (each
-- statement of this VOLATILE function takes a fresh snapshot, and every writer of a host's
-- load locks its row first, so every committed reservation there is counted), the
-- reservation is inserted and the name checked again (a create that finalized meanwhile is
-- visible now). outcome: 'placed' (with policy — the cluster's name, hypervisor_type and
-- weigher, NULL for any cluster — and load, the chosen host's host_loads row before this
-- reservation, without id), else why not ('taken', 'unknown cluster', 'no host'): the caller
-- rolls back and runs the full path, which gives the typed error or the answer.
CREATE FUNCTION reserve_fast(p_task text, p_vm text, p_vcpus int, p_memory bigint,
                             p_cluster text, p_exclude text[],
                             OUT outcome text, OUT policy jsonb, OUT load jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    c clusters%ROWTYPE;
    chosen bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM vms WHERE name = p_vm)
       OR EXISTS (SELECT 1 FROM reservations WHERE vm_name = p_vm OR task_id = p_task) THEN
        outcome := 'taken';
        RETURN;
    END IF;
    IF p_cluster IS NOT NULL THEN
        SELECT * INTO c FROM clusters WHERE name = p_cluster;
        IF NOT FOUND THEN
            outcome := 'unknown cluster';
            RETURN;
        END IF;
        policy := jsonb_build_object('name', c.name, 'hypervisor_type', c.hypervisor_type,
                                     'weigher', c.weigher);
    END IF;
    chosen := preselect_host(c.id, COALESCE(c.weigher, 'spread'), p_exclude, p_vcpus, p_memory);
    IF chosen IS NULL THEN
        outcome := 'no host';
        RETURN;
    END IF;
    SELECT to_jsonb(l) - 'id' INTO load FROM host_loads l WHERE l.id = chosen;
    INSERT INTO reservations (task_id, host_id, vm_name, vcpus, memory_mib)
    VALUES (p_task, chosen, p_vm, p_vcpus, p_memory) ON CONFLICT DO NOTHING;
    IF NOT FOUND OR EXISTS (SELECT 1 FROM vms WHERE name = p_vm) THEN
        outcome := 'taken';
        RETURN;
    END IF;
    outcome := 'placed';
END
$$;

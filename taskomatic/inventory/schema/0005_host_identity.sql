-- A host's identity is its hypervisor's own: the host UUID libvirt reports in its capabilities
-- (for the test driver, which reports none, "test:" and the real path of its host file). One
-- hypervisor is one host, whatever URI reaches it. Rows registered before this migration have
-- none until `host add` is run again with the same name and URI.

ALTER TABLE hosts ADD COLUMN hypervisor_id text UNIQUE;

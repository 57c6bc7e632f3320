"""``taskomatic dev``: the whole stack on one machine (Temporal dev server, PostgreSQL, test-driver
or lab hosts, a worker, the codec server), and the scripted demo."""

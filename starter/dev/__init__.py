"""``taskomatic dev``: the whole stack on one machine (Temporal dev server, PostgreSQL, test-driver
or lab hosts, a worker, the codec server), and the scripted demo.

Public: ``run_dev`` (the command), ``DevError`` (a start-up problem, shown without a traceback);
``starter.dev.parts`` holds the pieces tests and benchmarks reuse (``temporal_binary``,
``temporal_dev_server_argv``, ``embedded_postgres``, ``write_test_host``).
"""

from starter.dev.processes import DevError
from starter.dev.stack import run_dev

__all__ = ["DevError", "run_dev"]

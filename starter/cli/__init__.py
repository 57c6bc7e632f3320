"""The ``taskomatic`` command line, over the starter library: ``main`` assembles the parser from
one module per noun (``hosts``, ``vms``, ``storage`` (pools, volumes), ``tasks`` (and batches),
``reconcile``, ``lab``, ``access`` (token, grant), ``operations`` (db, worker, api, dev));
``common`` holds what they share and ``render`` the terminal output. The entry point is
``starter.cli.main:main``."""

"""Workflows: each task is one workflow whose id is the task id; no I/O, no wall clock, no
randomness. The public surface is the registry of task kinds, ``workflows.kinds`` (each kind's
workflow class, task-id slug, client method, request defaults and advisory check); the task
modules share the runbook (``workflows.runbook``: steps, undo, progress, errors) and the resource
lines (``workflows.ordering``). Not re-exported here: the sandbox imports each workflow module on
its own, and this package stays light for it.
"""

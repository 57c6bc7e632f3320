"""Workflows: each task is one workflow whose id is the task id. No I/O lives here."""

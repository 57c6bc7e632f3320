"""The worker writes the bytecode of its workflow modules, which the sandbox imports afresh into
every workflow run (``worker.write_workflow_bytecode``): with ``PYTHONDONTWRITEBYTECODE`` set, as
on this project's machines and in the image, every run would compile them from source again."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from worker import write_workflow_bytecode
from workflows.kinds import TASK_WORKFLOWS


def test_bytecode_of_every_workflow_module_is_written_and_current() -> None:
    written = write_workflow_bytecode(TASK_WORKFLOWS)
    modules = {wf.__module__ for wf in TASK_WORKFLOWS}
    assert sorted(written) == sorted(str(sys.modules[m].__file__) for m in modules)
    for source in written:
        cached = Path(importlib.util.cache_from_source(source))
        assert cached.is_file() and cached.stat().st_mtime >= Path(source).stat().st_mtime
        # What the import system reads back is this module's code.
        loader = importlib.machinery.SourceFileLoader("probe", source)
        assert loader.get_code("probe") is not None


def test_a_module_that_cannot_be_written_for_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "unwritable_workflow_module.py"
    src.write_text("X = 1\n")
    (tmp_path / "__pycache__").write_text("a file where the cache directory would go")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("unwritable_workflow_module")
        kind = type("Kind", (), {"__module__": module.__name__})
        assert write_workflow_bytecode([kind]) == []  # skipped, nothing raised
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("unwritable_workflow_module", None)

"""The layer rule (issue 12): ``core/`` is plain functions on arrays and files, so importing any of it
loads neither Prefect nor Dask's ``distributed``; ``tasks/`` are thin Prefect wrappers that call core
and write no files themselves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: a Prefect task's body: call core, log, report progress — longer means work that belongs in core
TASK_BODY_LINES = 40
#: calls that write files: outputs are written by core (``core.outputs``, the jobs' writers)
WRITERS = {"write_text", "write_bytes", "savefig", "save", "to_csv", "dump"}


def test_importing_all_of_core_loads_neither_prefect_nor_distributed():
    code = (
        "import importlib, pkgutil, sys\n"
        "import shadeflow.core as core\n"
        "for info in pkgutil.walk_packages(core.__path__, 'shadeflow.core.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(sorted(m for m in ('prefect', 'distributed') if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", f"importing shadeflow.core loads {loaded}"


def _tasks() -> list[tuple[str, ast.FunctionDef]]:
    """Every function decorated with Prefect's ``@task`` in tasks/."""
    found = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                (d.func if isinstance(d, ast.Call) else d).__dict__.get("id") == "task"
                for d in node.decorator_list
            ):
                found.append((f"{path.name}:{node.name}", node))
    return found


def test_there_are_tasks_to_check():
    assert len(_tasks()) >= 10


def test_tasks_are_thin():
    long = [
        f"{name} ({node.end_lineno - node.body[0].lineno + 1} lines)"
        for name, node in _tasks()
        if node.end_lineno - node.body[0].lineno + 1 > TASK_BODY_LINES
    ]
    assert not long, f"tasks longer than {TASK_BODY_LINES} lines (move the work to core): {long}"


def test_tasks_write_no_files_themselves():
    writing = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if name in WRITERS or name == "open":
                    writing.append(f"{path.name}:{node.lineno} {name}()")
    assert not writing, f"tasks write files themselves (move the writing to core): {writing}"

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
#: calls that write files: outputs are written by core (``core.io.output_folders``, the jobs' writers)
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


# ---------------------------------------------------------------------------------------------
# imports a reader can follow (issue 12, item 2)

#: the distribution's folders and the package each is installed as
DISTRIBUTION = {
    "core": "shadeflow.core",
    "tasks": "shadeflow.tasks",
    "flows": "shadeflow.flows",
    "infra": "shadeflow.infra",
    "deployments": "shadeflow.deployments",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in DISTRIBUTION.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [*package.split("."), *path.relative_to(ROOT / folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(module: str, path: Path, node: ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def test_imports_inside_the_distribution_are_relative_so_the_folder_tree_leads_to_the_file():
    absolute = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _modules().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and node.level == 0
        and (node.module or "").startswith("shadeflow")
    ]
    assert not absolute, (
        f"absolute shadeflow imports (a reader of the folder tree cannot follow them): {absolute}"
    )


def test_no_import_loops_between_modules():
    """Module-level imports only (imports inside functions and ``TYPE_CHECKING`` blocks do not run at
    import time)."""
    modules = _modules()
    graph = {
        module: {
            target
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.ImportFrom) and node.level
            for target in _imported(module, path, node, modules)
            if target in modules and target != module
        }
        for module, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*trail, module, target]
            if target not in state and (loop := visit(target, [*trail, module])):
                return loop
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            loop = visit(module, [])
            assert loop is None, f"import loop: {' → '.join(loop[loop.index(loop[-1]) :])}"

"""The shape of kt_core that the other modules build on: no import cycles (imports inside
functions counted), an import inside a function only with a comment saying why, and the run
folder's files named by one module alone (`kt_core/rundir.py`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kt_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The kt_core modules an import statement loads (`from . import a, b` loads a and b)."""
    if isinstance(node, ast.Import):
        candidates = [a.name for a in node.names]
    else:
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            full = ".".join(base + ([node.module] if node.module else []))
        else:
            full = node.module or ""
        candidates = [f"{full}.{a.name}" if f"{full}.{a.name}" in MODULES else full for a in node.names]
    out = []
    for name in candidates:
        while name and name not in MODULES:  # kt_core.datasets.transforms.X -> the module that holds X
            name = name.rpartition(".")[0]
        if name.startswith("kt_core"):
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the kt_core modules it imports, at the top or inside any function."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(t for t in _targets(module, node) if t != module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a, b, ..., a), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles_and_the_graph_sees_imports_inside_functions():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "kt_core.worker" in graph["kt_core.launcher"]  # imported inside resume()
    assert "kt_core.datasets.transforms" in graph["kt_core.data"]  # `from .datasets.transforms import ...`


def test_kt_core_has_no_import_cycles_counting_imports_inside_functions():
    assert find_cycle(import_graph()) is None


def test_an_import_inside_a_function_says_why_it_is_there():
    """Inside a function only for start-up cost (or an optional dependency), with a comment on
    the import's line or just above its group of imports; never to hide a cycle."""
    silent = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                first = node.lineno - 1
                while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                    first -= 1  # the top of this group of imports
                said = any("#" in lines[i] for i in range(max(0, first - 1), node.end_lineno))
                if not said:
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert silent == []


# What a run folder holds, by name: only kt_core/rundir.py may build these paths.
RUN_FILES = {"config.json", "status.json", "metrics.jsonl", "log.txt", "summary.json", "STOP", "worker.lock",
             "last.pt", "best.pt"}
RUN_FOLDERS = {"checkpoints", "eval", "exports", "tensorboard"}
NOT_A_RUN_FOLDER = {("kt_core/models.py", "checkpoints")}  # torch hub's own cache of downloaded weights


def _names_a_run_file(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILES:
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # folder / "checkpoints"
        right = node.right
        if isinstance(right, ast.Constant) and isinstance(right.value, str) and right.value in RUN_FOLDERS:
            return right.value
    return None


def test_only_the_run_folder_module_names_the_run_folders_files():
    owner = PACKAGE / "rundir.py"
    sources = [p for p in (*PACKAGE.rglob("*.py"), *(ROOT / "ui").rglob("*.py"), *(ROOT / "app_pages").rglob("*.py"),
                           ROOT / "app.py", *(ROOT / "bench").rglob("*.py")) if p != owner]
    offenders = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if (name := _names_a_run_file(node)) is not None:
                if (str(path.relative_to(ROOT)), name) not in NOT_A_RUN_FOLDER:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name!r}")
    assert offenders == []
    # ... and the check itself sees both ways of naming them
    assert _names_a_run_file(ast.parse('folder / "metrics.jsonl"').body[0].value.right)
    assert _names_a_run_file(ast.parse('folder / "checkpoints"').body[0].value)


def test_listing_and_stopping_runs_import_no_torch():
    """The run folder, the launcher and the listing stay cheap to import: `python -m kt_core runs`,
    `status` and `stop` answer without paying torch's start-up."""
    code = "import sys, kt_core.rundir, kt_core.launcher, kt_core.runs, kt_core.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_the_configs_augmentation_names_are_the_registrys():
    """config.py stays torch-free, so it spells the augmentation presets out rather than import
    the registry (kt_core.datasets.transforms, which imports torch): the two lists must agree."""
    from kt_core.config import AUGMENT_CHOICES
    from kt_core.datasets.transforms import AUGMENTS

    assert tuple(AUGMENT_CHOICES) == tuple(AUGMENTS.names())

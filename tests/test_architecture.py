"""The layering of the packages: a torch-free core, the torch models and engines, the application on top.

``hashindex`` (core) imports neither torch nor ``encoders`` nor ``hashapp`` (nor ``hashtorch``, whose
engines it finds by entry point); ``encoders`` and ``hashtorch`` import only the core's public
modules; only ``hashapp`` imports both. Module-level imports form no cycle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hashindex", "encoders", "hashapp", "hashtorch")


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


ALL_MODULES = {name: path for package in PACKAGES for name, path in _modules(package).items()}


def _imports(name: str, path: Path, module_level_only: bool) -> set[str]:
    """Absolute names of the modules ``name`` imports (submodules resolved where they exist)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not module_level_only:
                    visit(node.body)
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # annotations only: never executed
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in ALL_MODULES)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []))

    visit(tree.body)
    return found


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    return {name: {dep for dep in _imports(name, path, module_level_only) if dep in ALL_MODULES}
            for name, path in ALL_MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_module_walk_sees_every_package():
    assert {_top(m) for m in ALL_MODULES} == set(PACKAGES)
    assert "hashindex.store.reader" in ALL_MODULES and "hashapp.cli" in ALL_MODULES


def test_core_imports_in_a_process_without_torch_encoders_or_hashapp():
    core = sorted(_modules("hashindex"))
    script = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'encoders', 'hashapp', 'hashtorch'):\n"
        "    sys.modules[name] = None  # any import of them raises ImportError\n"
        "import importlib\n"
        f"for module in {core!r}:\n"
        "    importlib.import_module(module)\n"
        "print('imported', len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported" in result.stdout


@pytest.mark.parametrize("module_level_only", [True, False])
def test_no_layer_imports_upwards(module_level_only):
    """Function-level (lazy) imports count too: laziness must not hide a wrong dependency."""
    wrong = []
    for name, path in ALL_MODULES.items():
        for dep in _imports(name, path, module_level_only):
            top = _top(dep)
            if _top(name) == "hashindex" and top in ("encoders", "hashapp", "hashtorch", "torch", "torchvision"):
                wrong.append(f"{name} -> {dep}")
            if _top(name) in ("encoders", "hashtorch") and (top in ("hashapp", "click")
                                             or (top == "hashindex" and any(p.startswith("_")
                                                                            for p in dep.split(".")))):
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))


def test_spec_and_autotune_do_not_import_each_other():
    graph = _graph(module_level_only=False)
    assert "hashindex.autotune" not in graph["hashindex.spec"]


def test_module_level_imports_are_acyclic():
    graph = _graph(module_level_only=True)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if dep == node:
                continue
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in ALL_MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"

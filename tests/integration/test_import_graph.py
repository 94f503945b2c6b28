"""The import graph points one way. The demo (and its launch harness) may use the plugin, the plugin
never uses the demo; the lab (`srpo_verl/lab/`: helpers shared by tests/ and scripts/) may use the
plugin, nothing in the package outside it uses the lab. scripts/ and tests/ reach each other's code
only through the lab: no import of a module of the other folder, no sys.path entry but the
repository root (scripts run from a checkout where srpo_verl is not installed). A test may still run
or load the one script it tests. Every import is read, including the ones inside functions."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "srpo_verl"
# The repository root as a script computes it: the one sys.path entry scripts/ may add.
ROOT_EXPR = ast.dump(ast.parse("os.path.dirname(os.path.dirname(os.path.abspath(__file__)))", mode="eval").body)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every import statement of a file in package `root`, relative imports resolved."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            # `from srpo_verl import demo` imports the demo as well as `import srpo_verl.demo`.
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def upward_imports(root: Path, layer: str = "demo") -> list[str]:
    """Imports of srpo_verl.<layer> from modules of package `root` outside srpo_verl/<layer>/."""
    return [
        f"{path.relative_to(root.parent)}:{line}: {module}"
        for path in sorted(root.rglob("*.py"))
        if layer not in path.relative_to(root).parts[:-1]
        for line, module in imported_modules(path, root)
        if module == f"srpo_verl.{layer}" or module.startswith(f"srpo_verl.{layer}.")
    ]


def test_no_module_outside_the_demo_imports_it():
    assert upward_imports(PACKAGE) == []


def test_no_module_outside_the_lab_imports_it():
    assert upward_imports(PACKAGE, "lab") == []


def _sys_path_changes(tree: ast.AST) -> list[tuple[int, ast.AST | None]]:
    """(line, value added) of each change of sys.path: insert/append/extend calls, and assignments to
    sys.path or a slice of it (value None: not one entry)."""

    def is_sys_path(n) -> bool:
        return isinstance(n, ast.Attribute) and n.attr == "path" and getattr(n.value, "id", None) == "sys"

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_path(node.func.value):
            if node.func.attr in ("insert", "append", "extend"):
                out.append((node.lineno, node.args[-1] if node.func.attr != "extend" and node.args else None))
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_sys_path(getattr(t, "value", None) if isinstance(t, ast.Subscript) else t) for t in targets):
                out.append((node.lineno, None))
    return out


def cross_folder_reaches(repo: Path) -> list[str]:
    """Places where a file of scripts/ or tests/ reaches into another folder of the two by path: an
    import of a module that lives there (its own folder excepted: Python and pytest put that on
    sys.path themselves), a sys.path change (tests: any; scripts: anything but the repository root),
    or, in scripts/, a call naming the tests folder."""
    files = sorted(p for top in ("scripts", "tests") for p in (repo / top).rglob("*.py"))
    homes: dict[str, set[Path]] = {}  # top-level module name -> folders holding it
    for p in files:
        homes.setdefault(p.stem, set()).add(p.parent)
    out = []
    for path in files:
        tree = ast.parse(path.read_text())
        where = path.relative_to(repo)
        for line, module in imported_modules(path, repo):
            if homes.get(module.split(".")[0], {path.parent}) - {path.parent}:
                out.append(f"{where}:{line}: import {module}")
        roots = {
            n.targets[0].id
            for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and ast.dump(n.value) == ROOT_EXPR
        }
        for line, value in _sys_path_changes(tree):
            if where.parts[0] == "tests" or not (isinstance(value, ast.Name) and value.id in roots):
                out.append(f"{where}:{line}: sys.path")
        if where.parts[0] == "scripts":
            out += [
                f"{where}:{n.lineno}: names tests/"
                for n in ast.walk(tree)
                if isinstance(n, ast.Call)
                for a in n.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.split("/")[0] == "tests"
            ]
    return out


def test_scripts_and_tests_reach_each_other_only_through_the_lab():
    assert len(list((REPO / "tests").rglob("*.py"))) > 50  # the walk saw the folders
    assert cross_folder_reaches(REPO) == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    root = tmp_path / "srpo_verl"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "harness.py").write_text("from srpo_verl.core_algos import routing_mask\n")
    (root / "evaluate.py").write_text("def f():\n    from srpo_verl.demo.evaluate import generate\n")
    (root / "cli.py").write_text("from . import demo\nfrom .demo import harness\nimport srpo_verl.demo.task\n")
    assert imported_modules(root / "cli.py", root) == [
        (1, "srpo_verl.demo"),
        (2, "srpo_verl.demo.harness"),
        (3, "srpo_verl.demo.task"),
    ]
    assert upward_imports(root) == [
        "srpo_verl/cli.py:1: srpo_verl.demo",
        "srpo_verl/cli.py:2: srpo_verl.demo.harness",
        "srpo_verl/cli.py:3: srpo_verl.demo.task",
        "srpo_verl/evaluate.py:2: srpo_verl.demo.evaluate.generate",
    ]


def test_the_folder_check_sees_imports_sys_path_and_paths_across_folders(tmp_path):
    for name, text in {
        "tests/helper.py": "",
        "tests/core/test_a.py": "import helper\nimport sys\nsys.path.insert(0, 'x')\n",
        "tests/core/test_b.py": "from test_a import f\nfrom srpo_verl.lab import loss_case\n",
        "tests/gpu/probe.py": "import sys\nsys.path[:0] = ['a']\n",
        "scripts/tool.py": (
            "import os, sys\nROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n"
            "sys.path.insert(0, ROOT)\nsys.path.insert(0, os.path.join(ROOT, 'tests'))\n"
            "def f():\n    from probe import x\n"
        ),
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    # Same-folder imports (test_b -> test_a) and the lab are fine; so is the root on a script's path.
    assert cross_folder_reaches(tmp_path) == [
        "scripts/tool.py:6: import probe.x",
        "scripts/tool.py:4: sys.path",
        "scripts/tool.py:4: names tests/",
        "tests/core/test_a.py:1: import helper",
        "tests/core/test_a.py:3: sys.path",
        "tests/gpu/probe.py:2: sys.path",
    ]


def import_cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Groups of the package's modules that import one another in a circle (imports inside functions
    count: a lazy import is still a dependency), each sorted; [] when the graph has no circle."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for _, module in imported_modules(path, root):
            while module and module not in modules:  # `pkg.mod.attr` -> `pkg.mod`
                module = module.rpartition(".")[0]
            if module and module not in (name, root.name):  # the package's own __init__ imports nothing circular
                deps.add(module)
        graph[name] = deps

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return seen

    closure = {name: reaches(name) for name in graph}
    groups = {tuple(sorted(n for n in graph if n in closure[name] and name in closure[n])) for name in graph}
    return sorted(list(g) for g in groups if len(g) > 1)


def test_the_package_has_no_import_circle():
    # cpu/hf_rollout imported cpu/platform, which loads hf_rollout lazily (its replica loader): removed.
    assert import_cycles() == []


def test_the_circle_check_finds_a_lazy_circle(tmp_path):
    root = tmp_path / "srpo_verl"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "platform.py").write_text("def load():\n    from srpo_verl.cpu.hf_rollout import HFReplica\n")
    (root / "cpu" / "hf_rollout.py").write_text("from srpo_verl.cpu import platform\n")
    (root / "core.py").write_text("import torch\n")
    assert import_cycles(root) == [["srpo_verl.cpu.hf_rollout", "srpo_verl.cpu.platform"]]

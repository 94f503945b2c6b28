"""The package's import graph points one way: the demo (and its launch harness) may use the plugin,
the plugin never uses the demo. Every import in every module outside `srpo_verl/demo/` is read,
including the ones inside functions."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "srpo_verl"


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


def upward_imports(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root.parent)}:{line}: {module}"
        for path in sorted(root.rglob("*.py"))
        if "demo" not in path.relative_to(root).parts[:-1]
        for line, module in imported_modules(path, root)
        if module == "srpo_verl.demo" or module.startswith("srpo_verl.demo.")
    ]


def test_no_module_outside_the_demo_imports_it():
    assert upward_imports(PACKAGE) == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    root = tmp_path / "srpo_verl"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "harness.py").write_text("from srpo_verl.core_algos import routing_mask\n")
    (root / "evaluate.py").write_text("def f():\n    from srpo_verl.demo.evaluate import generate\n")
    (root / "cli.py").write_text("from . import demo\nfrom .demo import harness\nimport srpo_verl.demo.task\n")
    assert imported_modules(root / "cli.py", root) == [
        (1, "srpo_verl.demo"), (2, "srpo_verl.demo.harness"), (3, "srpo_verl.demo.task")
    ]
    assert upward_imports(root) == [
        "srpo_verl/cli.py:1: srpo_verl.demo",
        "srpo_verl/cli.py:2: srpo_verl.demo.harness",
        "srpo_verl/cli.py:3: srpo_verl.demo.task",
        "srpo_verl/evaluate.py:2: srpo_verl.demo.evaluate.generate",
    ]

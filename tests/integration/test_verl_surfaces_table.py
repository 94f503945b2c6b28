"""docs/verl_surfaces.md stays true: every row names where srpo_verl touches the surface (files that
exist) and tests that exist; a row naming a moved file or a renamed test fails here."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "verl_surfaces.md"
ROW = re.compile(r"^\|\s*(S\d{2})\s*\|")
# `tests/a/b.py::name`, or `::name` for another test of the file named before it in the cell.
NODE = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")
# `integration/trainer.py:...` (under srpo_verl/) or `setup.py` (the repository root).
WHERE = re.compile(r"`([\w/]+\.py)[:`]")


def rows() -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in DOC.read_text().splitlines()
        if ROW.match(line)
    ]


def named_tests(cell: str) -> list[tuple[str, str]]:
    out, current = [], None
    for path, name in NODE.findall(cell):
        current = path or current
        out.append((current, name))
    return out


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_row_has_an_id_in_order_and_five_cells():
    table = rows()
    assert len(table) >= 40
    assert [r[0] for r in table] == [f"S{i:02d}" for i in range(1, len(table) + 1)]
    assert all(len(r) == 5 for r in table)


def test_every_named_place_exists():
    missing = []
    for row in rows():
        for name in WHERE.findall(row[3]):
            if not ((ROOT / "srpo_verl" / name).exists() or (ROOT / name).exists()):
                missing.append(f"{row[0]}: {name}")
    assert missing == []


def test_every_named_test_exists():
    missing = []
    for row in rows():
        named = named_tests(row[4])
        assert named, f"{row[0]} names no test"
        for path, name in named:
            assert path is not None, f"{row[0]}: ::{name} without a file before it"
            if not (ROOT / path).exists() or name not in defined_tests(ROOT / path):
                missing.append(f"{row[0]}: {path}::{name}")
    assert missing == []


def test_the_reader_follows_a_file_into_its_continuations():
    cell = "`tests/e2e/x.py::test_a`, `::test_b` *(slow)*; `tests/cpu/y.py::test_c`"
    assert named_tests(cell) == [
        ("tests/e2e/x.py", "test_a"),
        ("tests/e2e/x.py", "test_b"),
        ("tests/cpu/y.py", "test_c"),
    ]


# ---------------------------------------------------------------- one verl adapter
GLUE = ROOT / "srpo_verl" / "integration"
ADAPTER = GLUE / "verl_adapter.py"
# Underscored names the glue may touch outside the adapter, none of them verl's.
NOT_VERL = {"_initializing"}  # importlib's ModuleSpec, read by registrations._half_imported


def private_reaches(path: Path) -> list[str]:
    """What a glue module reaches that verl does not promise to keep: an import of TransferQueue (the
    v1 trainer's store), or an underscored attribute of anything but self, cls or super(), written
    directly or through getattr/setattr/hasattr with a literal name."""

    def own(node) -> bool:
        return (isinstance(node, ast.Name) and node.id in ("self", "cls")) or (
            isinstance(node, ast.Call) and getattr(node.func, "id", None) == "super"
        )

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__") and name not in NOT_VERL

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            out += [f"{node.lineno}: import {n}" for n in names if n.split(".")[0] == "transfer_queue"]
        elif isinstance(node, ast.Attribute) and private(node.attr) and not own(node.value):
            out.append(f"{node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
            and not own(node.args[0])
        ):
            out.append(f"{node.lineno}: {node.func.id}(…, {node.args[1].value!r})")
    return out


def test_only_the_adapter_reaches_verls_private_surfaces():
    found = {p.name: private_reaches(p) for p in sorted(GLUE.glob("*.py")) if p != ADAPTER and private_reaches(p)}
    assert found == {}
    assert private_reaches(ADAPTER), "the adapter no longer reaches anything private: is the rule still needed?"


def test_the_private_reach_check_sees_each_form(tmp_path):
    module = tmp_path / "glue.py"
    module.write_text(
        "import transfer_queue as tq\n"
        "from transfer_queue import KVBatchMeta\n"
        "def f(self, wg, engine):\n"
        "    self._mine = super()._theirs_through_super()\n"
        "    n = wg._dispatch_info\n"
        "    engine._flag = True\n"
        "    d = getattr(engine, '_autocast_dtype', None)\n"
        "    return wg.__class__, getattr(self, '_x', 0)\n"
    )
    assert private_reaches(module) == [
        "1: import transfer_queue",
        "2: import transfer_queue",
        "5: ._dispatch_info",
        "6: ._flag",
        "7: getattr(…, '_autocast_dtype')",
    ]

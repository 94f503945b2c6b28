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

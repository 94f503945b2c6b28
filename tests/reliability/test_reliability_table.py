"""docs/reliability.md stays true: every case row names tests that exist and cannot be skipped, and
every test in tests/reliability (each case of a case-parametrised test) is named by some row.

The named tests run in the same suite (tests/core, tests/integration, tests/cpu, tests/reliability),
so a row whose outcome stops holding fails its test; a row naming a missing, renamed or skipped
test, or a new test without a row, fails here.
"""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
HERE = Path(__file__).resolve().parent
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?`")
ROW = re.compile(r"^\|\s*([A-Z]\d{2})\s*\|")
CONTROL_PREFIX = "K"  # valid-input controls: listed, but not counted as bad inputs


def doc_rows() -> list[tuple[str, list[tuple[str, str, str | None]]]]:
    rows = []
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((match.group(1), [(p, f, param) for p, f, param in NODE.findall(cells[-1])]))
    for case, nodes in rows:
        for i, (path, func, param) in enumerate(nodes):
            nodes[i] = (path, func, param or None)
    return rows


def functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def skip_marks(path: Path, func: ast.FunctionDef) -> list[str]:
    """skip/skipif/xfail decorators of a test, or of its module (`pytestmark = ...`)."""
    tree = ast.parse(path.read_text())
    module_marks = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
    ]
    text = " ".join(ast.unparse(d) for d in [*func.decorator_list, *module_marks])
    return re.findall(r"\b(skip|skipif|xfail)\b", text)


def case_ids(path: Path, name: str) -> list[str] | None:
    """Explicit ids of a test's single parametrisation (its cases), or None."""
    spec = importlib.util.spec_from_file_location(f"_reliability_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    marks = [m for m in getattr(getattr(module, name), "pytestmark", []) if m.name == "parametrize"]
    if len(marks) != 1 or not isinstance(marks[0].kwargs.get("ids"), (list, tuple)):
        return None
    return list(marks[0].kwargs["ids"])


ROWS = doc_rows()


def test_table_has_rows_with_unique_ids_and_enough_bad_inputs():
    ids = [case for case, _ in ROWS]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert all(nodes for _, nodes in ROWS), [case for case, nodes in ROWS if not nodes]
    bad_inputs = [case for case in ids if not case.startswith(CONTROL_PREFIX)]
    assert len(bad_inputs) >= 30, len(bad_inputs)


@pytest.mark.parametrize("case, nodes", ROWS, ids=[case for case, _ in ROWS])
def test_row_names_existing_unskipped_tests(case, nodes):
    for path, func, param in nodes:
        file = ROOT / path
        assert file.exists(), f"{case}: {path} does not exist"
        defined = functions(file)
        assert func in defined, f"{case}: {path} has no {func}"
        assert not skip_marks(file, defined[func]), f"{case}: {path}::{func} can be skipped"
        if param is not None:
            ids = case_ids(file, func)
            assert ids is not None and param in ids, f"{case}: {path}::{func} has no case [{param}] (cases: {ids})"


def test_every_reliability_test_has_a_row():
    named = {(path, func, param) for _, nodes in ROWS for path, func, param in nodes}
    missing = []
    for file in sorted(HERE.glob("test_*.py")):
        if file.name == Path(__file__).name:
            continue
        path = str(file.relative_to(ROOT))
        for func in functions(file):
            if (path, func, None) in named:
                continue
            ids = case_ids(file, func)
            if ids is None:
                missing.append(f"{path}::{func}")
            else:
                missing += [f"{path}::{func}[{i}]" for i in ids if (path, func, i) not in named]
    assert not missing, "tests without a row in docs/reliability.md:\n" + "\n".join(missing)

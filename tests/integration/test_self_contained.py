"""The repository stands alone: no tracked file cites a document outside it, and every relative
Markdown link points at a file inside it. The project's own specification is docs/spec.md."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Names of documents that live outside the repository, written in two pieces so that this file
# does not cite them itself.
OUTSIDE = [
    "SRPO" + "_SPEC",
    "OFFLINE" + "_ASSETS",
    "VERL_CPU" + "_ROLLOUT",
    "STYLE" + ".md",
    "shared" + "/docs",
    "../" + "shared",
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    paths = [REPO / p for p in out.decode().split("\0") if p]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]


def outside_citations(path: Path, root: Path = REPO) -> list[str]:
    text = path.read_text(errors="replace")
    return [
        f"{path.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}: {name}"
        for name in OUTSIDE
        for m in re.finditer(re.escape(name), text)
    ]


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    out = []
    for m in LINK.finditer(path.read_text(errors="replace")):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        resolved = os.path.normpath(path.parent / target.split("#")[0])
        if not resolved.startswith(str(root) + os.sep) or not os.path.exists(resolved):
            out.append(f"{path.relative_to(root)}: ({target})")
    return out


def test_no_tracked_file_cites_a_document_outside_the_repository():
    files = tracked_text_files()
    assert len(files) > 100  # the walk saw the repository, not an empty list
    assert [hit for path in files for hit in outside_citations(path)] == []


def test_every_relative_markdown_link_stays_inside_and_resolves():
    docs = [p for p in tracked_text_files() if p.suffix == ".md"]
    assert [bad for path in docs for bad in broken_links(path)] == []


def test_the_checks_find_what_they_look_for(tmp_path):
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    (tmp_path / "docs" / "spec.md").write_text("spec")
    page.write_text(
        f"See {OUTSIDE[0]}.md.\n[spec](spec.md) [web](https://example.org) [up](../../{OUTSIDE[5][3:]}/x.md)\n"
        "[gone](missing.md) [anchor](#one-step)\n"
    )
    assert outside_citations(page, tmp_path) == [f"docs/page.md:1: {OUTSIDE[0]}", f"docs/page.md:2: {OUTSIDE[5]}"]
    assert broken_links(page, tmp_path) == [
        f"docs/page.md: (../../{OUTSIDE[5][3:]}/x.md)",
        "docs/page.md: (missing.md)",
    ]

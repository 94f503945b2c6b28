"""The supported verl release has one source, `srpo_verl.SUPPORTED_VERL`: setup.py pins what it reads."""

import runpy
import sys
import types
from pathlib import Path

from srpo_verl import SUPPORTED_VERL

SETUP = Path(__file__).resolve().parents[2] / "setup.py"


def setup_kwargs(monkeypatch, setup_py: Path = SETUP) -> dict:
    """What setup.py passes to setuptools.setup, with setuptools stubbed (nothing is built)."""
    seen = {}
    stub = types.ModuleType("setuptools")
    stub.setup = lambda **kw: seen.update(kw)
    stub.find_packages = lambda **kw: []
    monkeypatch.setitem(sys.modules, "setuptools", stub)
    runpy.run_path(str(setup_py), run_name="__main__")
    return seen


def test_setup_pins_the_supported_verl(monkeypatch):
    requires = setup_kwargs(monkeypatch)["install_requires"]
    verl = [r for r in requires if r.startswith("verl")]
    major, minor, patch = SUPPORTED_VERL.split(".")
    assert verl == [f"verl[verl-core]>={SUPPORTED_VERL},<{major}.{minor}.{int(patch) + 1}"]


def test_setup_reads_the_pin_from_the_package(monkeypatch, tmp_path):
    # A copy of setup.py beside a package that declares another release pins that release.
    (tmp_path / "srpo_verl").mkdir()
    (tmp_path / "srpo_verl" / "__init__.py").write_text('SUPPORTED_VERL = "9.8.7"\n')
    (tmp_path / "setup.py").write_text(SETUP.read_text())
    assert "verl[verl-core]>=9.8.7,<9.8.8" in setup_kwargs(monkeypatch, tmp_path / "setup.py")["install_requires"]


def test_the_pin_admits_builds_of_the_release_and_nothing_else(monkeypatch):
    # pip keeps an installed post-release or local build (a patched verl) instead of replacing it.
    from packaging.requirements import Requirement

    spec = Requirement(next(r for r in setup_kwargs(monkeypatch)["install_requires"] if r.startswith("verl"))).specifier
    major, minor, patch = SUPPORTED_VERL.split(".")
    builds = [SUPPORTED_VERL, f"{SUPPORTED_VERL}.post1", f"{SUPPORTED_VERL}+local"]
    others = [f"{major}.{minor}.{int(patch) + 1}", f"{major}.{int(minor) + 1}.0", f"{SUPPORTED_VERL}rc1"]
    assert all(spec.contains(v) for v in builds) and not any(spec.contains(v) for v in others)

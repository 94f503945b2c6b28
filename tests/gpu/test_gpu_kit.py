"""scripts/gpu_kit.py: the kit installs from its folder alone, and verl's engine check passes from it.

The slow test is the proof docs/gpu.md cites: this Python's variant of the kit (built once into the
ignored .gpu_kit_py311/ and reused), a fresh venv with the CPU torch and the lent image's packages
only, the kit installed with --no-index into a folder on PYTHONPATH (as on the GPU machine), and
`gpu_check.py --engine --device cpu` run there (~1.5 min, plus ~30 s to download a kit).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_kit.py")


def gpu_kit():
    spec = importlib.util.spec_from_file_location("gpu_kit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_wants_only_the_packages_not_installed_and_only_on_its_python(tmp_path):
    kit = gpu_kit()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = {"python": here, "packages": {"pytest": "0.0.1", "srpo-no-such-package": "1.0"}, "wheels": []}
    (tmp_path / kit.MANIFEST).write_text(json.dumps(manifest))
    # pytest is installed (at another version): the environment's copy stays.
    assert kit.missing_packages(str(tmp_path)) == ["srpo-no-such-package==1.0"]
    (tmp_path / kit.MANIFEST).write_text(json.dumps({**manifest, "python": "2.7"}))
    with pytest.raises(SystemExit, match="Python 2.7"):
        kit.missing_packages(str(tmp_path))


def test_the_kit_lists_verl_and_what_the_image_lacks_but_no_ray():
    names = {gpu_kit().canonical(n) for n in gpu_kit().KIT}
    assert {"verl", "hydra-core", "omegaconf", "antlr4-python3-runtime", "tensordict", "codetiming"} <= names
    assert not {n for n in names if n.startswith("ray")}
    # The image's own packages never come from the kit (a torch from it would replace the CUDA one).
    assert not names & {"torch", "transformers", "numpy", "pandas", "pyarrow", "safetensors", "tokenizers"}


@pytest.mark.slow
def test_engine_check_passes_in_a_fresh_cpu_venv_from_the_kit(tmp_path):
    out = subprocess.run(
        [sys.executable, SCRIPT, "prove", "--venv", str(tmp_path / "venv")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    size = float(re.search(r"kit for Python \d+\.\d+: .*?([\d.]+) MiB", out.stdout).group(1))
    assert size < 60
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("torch "))
    # The CPU torch stood in for the image's CUDA one, and Ray was the check's import shim.
    assert "+cpu" in header.split()[1] and "verl 0.9.1" in header and "import shim" in header
    assert "--no-index" in out.stdout and os.path.join(str(tmp_path), "venv", "kit_site") in out.stdout
    assert not [line for line in lines if line.startswith("FAIL")]
    passed = [line for line in lines if line.startswith("PASS")]
    assert len(passed) == 8, lines[-20:]
    for name in ("SRPO update: gradient", "top-K hook", "EMA step", "teacher pass with the EMA teacher", "save/load"):
        assert any(name in line for line in passed), name

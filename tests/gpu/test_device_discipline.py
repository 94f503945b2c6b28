"""Static check: every tensor factory call on the GPU path says where its tensor lives.

On GPU everything verl hands the SRPO code is on the accelerator; a factory call without `device=`
makes a CPU tensor, and the first op that mixes the two crashes (or, for an index, silently syncs).
Every `torch.<factory>(...)` in `srpo_verl/core_algos.py` and `srpo_verl/integration/` must pass
`device=` (taken from its inputs), or carry a `# host:` comment on its line saying why the tensor
belongs on the host (trainer-side data, checkpoint files, metrics). A module that runs only on the
driver says so once, in a line starting `# device: host-side module`.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "srpo_verl" / "core_algos.py", *sorted((ROOT / "srpo_verl" / "integration").glob("*.py"))]
FACTORIES = {
    "arange",
    "zeros",
    "ones",
    "empty",
    "full",
    "tensor",
    "as_tensor",
    "randint",
    "rand",
    "randn",
    "randperm",
    "eye",
    "linspace",
    "logspace",
    "empty_strided",
    "scalar_tensor",
}


def factory_calls(path: Path):
    """(line, name, has_device) of each torch.<factory>(...) call in a file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in FACTORIES
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            yield node.lineno, node.func.attr, any(k.arg == "device" for k in node.keywords)


HOST_MODULE = "# device: host-side module"


def undeclared(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    if any(line.startswith(HOST_MODULE) for line in lines):
        return []
    return [
        f"{path.name}:{line}: torch.{name}(...) without device= or a `# host:` comment"
        for line, name, has_device in factory_calls(path)
        if not has_device and "# host:" not in lines[line - 1]
    ]


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_factory_call_names_its_device_or_is_declared_host_side(path):
    assert undeclared(path) == []


def test_host_side_modules_are_the_driver_ones():
    host = [p.name for p in FILES if any(line.startswith(HOST_MODULE) for line in p.read_text().splitlines())]
    assert host == ["config_checks.py", "data_checks.py", "step_checks.py", "trainer.py"]


def test_the_check_finds_the_pattern_of_the_first_update_crash(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\n"
        "def rows(lens):\n"
        "    return torch.repeat_interleave(torch.arange(len(lens)), lens)\n"
        "def ok(lens):\n"
        "    return torch.arange(len(lens), device=lens.device)\n"
        "def host():\n"
        "    return torch.zeros(3)  # host: a metric on the driver\n"
    )
    assert undeclared(bad) == ["bad.py:3: torch.arange(...) without device= or a `# host:` comment"]

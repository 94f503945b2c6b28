"""scripts/gpu_check.py runs end to end (on the CPU device here; on a GPU machine with --device cuda)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_check_script_passes_on_the_cpu_device():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--device", "cpu", "--vocab", "2048", "--k", "50"],
        capture_output=True, text=True, timeout=300,
    )
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not [line for line in lines if line.startswith("FAIL")]
    passed = [line for line in lines if line.startswith("PASS")]
    # math (fp32 + bf16), in-place cross-entropy (private-copy and lent gradient, nothing left
    # incomplete, bf16 lent vs private-copy error), and the loss hook (verl is installed here)
    assert len(passed) == 16, lines
    assert any("loss hook" in line for line in passed)

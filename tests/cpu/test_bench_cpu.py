"""scripts/bench_cpu.py: every mode parses its flags, and the loss mode runs at tiny sizes."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "bench_cpu.py")


@pytest.mark.parametrize("mode, flag", [("update", "--memory"), ("loss", "--skip-naive"), ("launch", "--plain")])
def test_each_mode_describes_itself(mode, flag):
    out = subprocess.run([sys.executable, SCRIPT, mode, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert flag in out.stdout


def test_loss_mode_compares_the_branches_at_tiny_sizes():
    out = subprocess.run(
        [sys.executable, SCRIPT, "loss", "--tokens", "64", "--vocab", "2048", "--k", "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cases = [line.split()[0] for line in out.stdout.splitlines() if " s   extra peak " in line]
    assert cases == ["(b)", "(a)", "(a')", "(c)"]
    assert "SDPO branch extra over GRPO: lent" in out.stdout and "time(c)/time(a) = " in out.stdout

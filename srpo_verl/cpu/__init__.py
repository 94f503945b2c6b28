"""Opt-in CPU backend for verl 0.9.1 (platform, FSDP engine on CPU, HF-generate rollout).

Activated only when SRPO_VERL_PLATFORM=cpu is set in the process environment (the shipped
`platform=cpu` config sets it for the driver and every Ray worker). Placeholder: filled in by the
CPU-backend work.
"""

import os

ENV_VAR = "SRPO_VERL_PLATFORM"


def requested() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() == "cpu"


def activate_if_requested() -> bool:
    return False

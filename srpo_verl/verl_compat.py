"""Which installed verl srpo_verl runs on: the one version gate of the SRPO trainer and the CPU backend.

Both hook private verl API that changes between releases, so they run on builds of the supported
release (`srpo_verl.SUPPORTED_VERL`): the release itself, its post-releases and local builds
(`0.9.1.post1`, `0.9.1+mycluster`: a patched or source install keeps its version's release numbers).
Any other verl is refused, unless ALLOW_ENV is set to 1, which downgrades the refusal to a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from packaging.version import InvalidVersion, Version

from srpo_verl import SUPPORTED_VERL

ALLOW_ENV = "SRPO_VERL_ALLOW_ANY_VERL"
logger = logging.getLogger(__name__)


def is_build_of(installed: str, supported: str = SUPPORTED_VERL) -> bool:
    """True for `supported` itself, its post-releases and local builds (not pre- or dev releases)."""
    try:
        got, want = Version(installed), Version(supported)
    except InvalidVersion:
        return False
    return got.release == want.release and not (got.is_prerelease or got.is_devrelease)


def verl_version_problem(installed: str, what: str, supported: str = SUPPORTED_VERL) -> Optional[str]:
    """Why `what` (the part of srpo_verl asking) cannot run on `installed` verl, or None. With ALLOW_ENV=1
    the problem is logged as a warning and None is returned."""
    if is_build_of(installed, supported):
        return None
    problem = (
        f"{what} supports verl {supported} only (and its post-releases and local builds), but verl {installed} "
        f"is installed: it hooks private verl API that changes between releases. Install verl=={supported}, "
        f"or set {ALLOW_ENV}=1 to run anyway at your own risk."
    )
    if os.environ.get(ALLOW_ENV, "").strip() == "1":
        logger.warning("%s=1: running on an unsupported verl. %s", ALLOW_ENV, problem)
        return None
    return problem

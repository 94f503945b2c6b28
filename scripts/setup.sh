#!/usr/bin/env bash
# Set up everything srpo_verl needs in ./.venv (idempotent; a second run takes seconds).
#   - torch: the CPU build (torch==2.13.0) on machines without an NVIDIA GPU; on a GPU machine the
#     torch already in your environment is kept (use SRPO_VENV=system to install into it).
#   - verl[verl-core]==0.9.1, hydra, transformers (pinned by setup.py), srpo_verl itself (editable),
#     and the test and demo extras, installed with uv when it can be had from PyPI (else pip).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SRPO_VENV:-.venv}"
if [[ "$VENV" != "system" ]]; then
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
PY=python
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: install the CUDA torch your verl deployment uses, then re-run." >&2
    exit 1
  fi
  echo "[setup] installing the CPU build of torch (torch==2.13.0)"
  $PY -m pip install -q torch==2.13.0
fi

if ! $PY -c "import srpo_verl, verl, hypothesis, reasoning_gym, matplotlib, tensorboard" 2>/dev/null \
    || ! $PY -m ruff --version >/dev/null 2>&1; then
  echo "[setup] installing verl 0.9.1 and srpo_verl (editable) with test/demo extras"
  # uv (a PyPI wheel, installed into the environment first) resolves, downloads and installs the
  # ~150 packages in parallel where pip takes them one at a time: the same versions in a fraction
  # of the time. The torch installed above is pinned as a constraint, so uv keeps it (uv does not
  # read pip's configuration and would otherwise be free to pick another build). --compile-bytecode
  # writes the .pyc files pip writes: without them every Ray worker recompiles torch, transformers
  # and verl from source at each import (and never caches them where PYTHONDONTWRITEBYTECODE is
  # set). pip is the fallback.
  TORCH_PIN="$(mktemp)"
  $PY -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$TORCH_PIN"
  if $PY -m pip install -q "uv>=0.5" 2>/dev/null \
      && $PY -m uv pip install -q --compile-bytecode --python "$(command -v $PY)" --constraint "$TORCH_PIN" \
        -e ".[test,demo]"; then
    :
  else
    echo "[setup] uv unavailable or failed: installing with pip"
    $PY -m pip install -q -e ".[test,demo]"
  fi
  rm -f "$TORCH_PIN"
fi

$PY -m srpo_verl check

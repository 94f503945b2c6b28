#!/usr/bin/env bash
# SRPO | Qwen3-8B | ToolAlpaca tool use — SRPO Table 1 cell, paper: 71.2 best avg@16 within 10h
# All knobs of ../common.sh apply (DATA_DIR, MODEL_PATH, INFER_BACKEND, NNODES, DRY_RUN=1, ...);
# extra arguments are appended as Hydra overrides.
set -xeuo pipefail
export CELL_MODEL=qwen3_8b CELL_ALGO=srpo CELL_TASK=toolalpaca
exec bash "$(dirname "$0")/../common.sh" "$@"

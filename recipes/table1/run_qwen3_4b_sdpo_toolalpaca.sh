#!/usr/bin/env bash
# SDPO | Qwen3-4B | ToolAlpaca tool use — SRPO Table 1 cell, paper: 61.1 best avg@16 within 10h
# All knobs of ../common.sh apply (DATA_DIR, MODEL_PATH, INFER_BACKEND, NNODES, DRY_RUN=1, ...);
# extra arguments are appended as Hydra overrides.
set -xeuo pipefail
export CELL_MODEL=qwen3_4b CELL_ALGO=sdpo CELL_TASK=toolalpaca
exec bash "$(dirname "$0")/../common.sh" "$@"

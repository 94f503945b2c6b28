#!/usr/bin/env bash
# SRPO w/o DW (beta = 0) | Qwen3-8B | SciKnowEval Physics (L3 MCQ) — SRPO ablation, paper: 75.6 avg over the 5 tasks, best avg@16 within 10h
# All knobs of ../common.sh apply (DATA_DIR, MODEL_PATH, INFER_BACKEND, NNODES, DRY_RUN=1, ...);
# extra arguments are appended as Hydra overrides.
set -xeuo pipefail
export CELL_MODEL=qwen3_8b CELL_ALGO=srpo_no_dw CELL_TASK=physics
exec bash "$(dirname "$0")/../common.sh" "$@"

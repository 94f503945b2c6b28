#!/usr/bin/env bash
# Data for the SRPO paper runs: SciKnowEval L3 MCQ (4 domains) and ToolAlpaca, as verl parquet.
#
# Knobs (environment):
#   DATA_DIR            output root, read by common.sh           (default: ~/data/srpo)
#   SCIKNOWEVAL_LOCAL   upstream SciKnowEval file/folder instead of the Hugging Face Hub
#   TOOLALPACA_LOCAL    a clone of github.com/tangqiaoyu/ToolAlpaca instead of downloading
#   PYTHON              interpreter with srpo_verl installed     (default: python3)
set -xeuo pipefail

########################### user-adjustable ###########################
DATA_DIR=${DATA_DIR:-${HOME}/data/srpo}
SCIKNOWEVAL_LOCAL=${SCIKNOWEVAL_LOCAL:-}
TOOLALPACA_LOCAL=${TOOLALPACA_LOCAL:-}
PYTHON=${PYTHON:-python3}
########################### end user-adjustable ###########################

SCRIPTS=$(cd "$(dirname "$0")/../scripts" && pwd)

SCIKNOWEVAL_ARGS=(--out-dir "${DATA_DIR}")
[ -z "${SCIKNOWEVAL_LOCAL}" ] || SCIKNOWEVAL_ARGS+=(--local-file "${SCIKNOWEVAL_LOCAL}")
TOOLALPACA_ARGS=(--out-dir "${DATA_DIR}")
[ -z "${TOOLALPACA_LOCAL}" ] || TOOLALPACA_ARGS+=(--local-dir "${TOOLALPACA_LOCAL}")

"${PYTHON}" "${SCRIPTS}/prepare_sciknoweval.py" "${SCIKNOWEVAL_ARGS[@]}"
"${PYTHON}" "${SCRIPTS}/prepare_toolalpaca.py" "${TOOLALPACA_ARGS[@]}"

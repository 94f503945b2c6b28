#!/usr/bin/env bash
# GRPO vs SDPO vs SRPO vs SRPO beta=0 on the CPU demo task: same warm start, data, seeds and
# settings, through verl's trainer (python -m srpo_verl.main_ppo platform=cpu); report with plots.
# 4 methods x 3 seeds = 12 launches; ~40 min on 2 cores at the defaults (docs/demo.md).
# Knobs (environment):
#   COMPARE_METHODS=grpo,sdpo,srpo,srpo_no_dw
#   COMPARE_SEEDS=0,1,2
#   COMPARE_STEPS=30 COMPARE_EVAL_EVERY=10
#   COMPARE_OUT=outputs/compare   (finished runs are skipped: re-running resumes an interrupted comparison)
set -euo pipefail
# shellcheck source=scripts/preamble.sh
source "$(dirname "$0")/preamble.sh"

python -m srpo_verl.demo.run \
  --out "${COMPARE_OUT:-outputs/compare}" \
  --methods "${COMPARE_METHODS:-grpo,sdpo,srpo,srpo_no_dw}" \
  --seeds "${COMPARE_SEEDS:-0,1,2}" \
  --steps "${COMPARE_STEPS:-30}" \
  --eval-every "${COMPARE_EVAL_EVERY:-10}" \
  --title "GRPO / SDPO / SRPO on the CPU demo task"

#!/usr/bin/env bash
# The main job: CPU demo of SRPO (srpo_verl on verl 0.9.1) with a Markdown + PNG report.
#   tiny Qwen3 (1M params, character tokenizer) | 2-digit addition (reasoning-gym) | verl's trainer, platform=cpu
# Steps: setup (scripts/setup.sh) -> tiny model, data, warm-start SFT (cached in ~/.cache/srpo_verl)
#   -> SRPO through `python -m srpo_verl.main_ppo` with a line per step -> held-out evaluation of the
#   saved weights -> DEMO_OUT/report.md + PNGs. Measured from a fresh clone (new venv, empty caches,
#   2 cores): 7.3-7.9 min, of it setup 1.5 min and the warm start 1.7-1.8 min, both reused by later runs
#   (docs/demo.md).
# Knobs (environment):
#   DEMO_STEPS=40       RL steps
#   DEMO_EVAL_EVERY=10  steps between evaluated checkpoints
#   DEMO_SEED=0         data/rollout seed
#   DEMO_OUT=outputs/demo  output directory (report.md, PNGs, runs/)
#   DEMO_QUICK=1        CI form: 2 RL steps and a 30-step warm start (checks the pipeline, not learning)
set -euo pipefail
# shellcheck source=scripts/preamble.sh
source "$(dirname "$0")/preamble.sh"

STEPS="${DEMO_STEPS:-40}"
EVAL_EVERY="${DEMO_EVAL_EVERY:-10}"
SEED="${DEMO_SEED:-0}"
OUT="${DEMO_OUT:-outputs/demo}"
WARM=()
if [[ "${DEMO_QUICK:-0}" == "1" ]]; then
  STEPS="${DEMO_STEPS:-2}"
  EVAL_EVERY="${DEMO_EVAL_EVERY:-2}"
  WARM=(--warm-start-steps 30)
fi
(( EVAL_EVERY <= STEPS )) || { echo "DEMO_EVAL_EVERY=$EVAL_EVERY must be <= DEMO_STEPS=$STEPS" >&2; exit 2; }

start=$(date +%s)
python -m srpo_verl.demo.run --out "$OUT" --methods srpo --seeds "$SEED" \
  --steps "$STEPS" --eval-every "$EVAL_EVERY" "${WARM[@]}" --title "srpo_verl CPU demo: SRPO, $STEPS steps"
echo "[demo] done in $(( $(date +%s) - start )) s: $OUT/report.md"

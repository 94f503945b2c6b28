#!/usr/bin/env bash
# SRPO paper runs | Qwen3-8B / Qwen3-4B | verl 0.9.1, FSDP2 training, SGLang or vLLM rollout, bf16
#
# The one launcher behind every cell script in table1/ and ablation/. A cell script sets
#   CELL_MODEL  qwen3_8b | qwen3_4b
#   CELL_ALGO   grpo | sdpo | srpo | srpo_no_dw | advantage_mix   (the `algorithm=` switch)
#   CELL_TASK   chemistry | physics | biology | materials | toolalpaca
# and execs this file; extra arguments are appended as Hydra overrides (they win).
#
# The method hyperparameters (lr, mini-batch, clip ratios, IS threshold, top-K, alpha, EMA rate,
# beta, rollout n, temperatures, validation n/T/top-p, warmup, weight decay, grad clip, batch of
# 32 prompts) come from the `algorithm=` switch (srpo_verl/config/algorithm/*.yaml, SRPO Table 3);
# this file adds what the switch does not: data, model, lengths, hardware, logging.
#
# Knobs (environment; defaults in the user-adjustable block):
#   DATA_DIR        parquet root written by recipes/prepare_data.sh       (default: ~/data/srpo)
#   MODEL_PATH      HF id or local path                                    (default: Qwen/Qwen3-8B or -4B)
#   INFER_BACKEND   sglang (the paper's) | vllm                            (default: sglang)
#                   (verl's environment holds one; `python -m srpo_verl check --recipe <cell>` tests its import)
#   NNODES, NGPUS_PER_NODE   one node of 8 GPUs by default; for several nodes start a Ray cluster
#                   first (ray start --head / ray start --address=HEAD:6379) and launch on the head
#   PROJECT_NAME, EXPERIMENT_NAME   trainer.project_name / experiment_name: the W&B project and run
#                   (and TensorBoard folder) names    (default: srpo_paper, <model>_<algo>_<task>);
#                   log to W&B by appending 'trainer.logger=[console,file,wandb]' (docs/tracking.md)
#   DRY_RUN=1       print the final override list, one per line, and exit (launches nothing)
set -xeuo pipefail

die() {
    echo "error: $*" >&2
    exit 1
}

########################### cell (set by the cell script) ###########################
CELL_MODEL=${CELL_MODEL:?set by the cell script: qwen3_8b or qwen3_4b}
CELL_ALGO=${CELL_ALGO:?set by the cell script: grpo, sdpo, srpo, srpo_no_dw or advantage_mix}
CELL_TASK=${CELL_TASK:?set by the cell script: chemistry, physics, biology, materials or toolalpaca}

case "${CELL_MODEL}" in
    qwen3_8b) default_model=Qwen/Qwen3-8B ;;
    qwen3_4b) default_model=Qwen/Qwen3-4B ;;
    *) die "CELL_MODEL must be qwen3_8b or qwen3_4b, got ${CELL_MODEL}" ;;
esac
case "${CELL_ALGO}" in
    grpo) mini_batch_prompts=8 ;;
    sdpo | srpo | srpo_no_dw | advantage_mix) mini_batch_prompts=32 ;;
    *) die "CELL_ALGO must be grpo, sdpo, srpo, srpo_no_dw or advantage_mix, got ${CELL_ALGO}" ;;
esac
case "${CELL_TASK}" in
    chemistry | physics | biology | materials | toolalpaca) ;;
    *) die "CELL_TASK must be chemistry, physics, biology, materials or toolalpaca, got ${CELL_TASK}" ;;
esac

########################### user-adjustable ###########################
DATA_DIR=${DATA_DIR:-${HOME}/data/srpo}
MODEL_PATH=${MODEL_PATH:-${default_model}}
INFER_BACKEND=${INFER_BACKEND:-sglang}
NNODES=${NNODES:-1}
NGPUS_PER_NODE=${NGPUS_PER_NODE:-8}

# Prompt/response lengths of SRPO Table 3.
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-2048}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-8192}

ROLLOUT_TP=${ROLLOUT_TP:-1}
ROLLOUT_GPU_MEM_UTIL=${ROLLOUT_GPU_MEM_UTIL:-0.6}
# Token budget of one dynamic micro-batch per GPU; must hold one full prompt + response.
PPO_MAX_TOKEN_LEN_PER_GPU=${PPO_MAX_TOKEN_LEN_PER_GPU:-$((2 * (MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH)))}
PARAM_OFFLOAD=${PARAM_OFFLOAD:-False}

# The paper reports the best validation within 10 h of training; 500 steps is ~10 h at its
# 72-92 s/step on 8x H20. Running longer is harmless: scripts/best_within_budget.py cuts at the budget.
TOTAL_TRAINING_STEPS=${TOTAL_TRAINING_STEPS:-500}
TOTAL_EPOCHS=${TOTAL_EPOCHS:-1000}
# Validation (avg@16, 16 samples at T=0.6, top-p 0.95, set by the switch) every TEST_FREQ steps
# and before training (step 0: the base model).
TEST_FREQ=${TEST_FREQ:-10}
SAVE_FREQ=${SAVE_FREQ:-50}
MAX_CKPT_TO_KEEP=${MAX_CKPT_TO_KEEP:-2}
SEED=${SEED:-42}

PROJECT_NAME=${PROJECT_NAME:-srpo_paper}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-${CELL_MODEL}_${CELL_ALGO}_${CELL_TASK}}
CKPT_ROOT=${CKPT_ROOT:-${PWD}/checkpoints}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
########################### end user-adjustable ###########################

########################### derived values and checks ###########################
case "${INFER_BACKEND}" in
    sglang | vllm) ;;
    *) die "INFER_BACKEND must be sglang or vllm, got ${INFER_BACKEND}" ;;
esac
n_gpus=$((NNODES * NGPUS_PER_NODE))
[ "${n_gpus}" -gt 0 ] || die "NNODES * NGPUS_PER_NODE must be positive"
# verl splits each optimiser mini-batch (prompts x 8 rollouts) evenly over the GPUs.
[ $((mini_batch_prompts * 8 % n_gpus)) -eq 0 ] ||
    die "${CELL_ALGO}'s mini-batch of ${mini_batch_prompts} prompts x 8 rollouts does not split over ${n_gpus} GPUs"
[ $((n_gpus % ROLLOUT_TP)) -eq 0 ] || die "ROLLOUT_TP=${ROLLOUT_TP} must divide the ${n_gpus} GPUs"
max_sequence=$((MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH))
[ "${PPO_MAX_TOKEN_LEN_PER_GPU}" -ge "${max_sequence}" ] ||
    die "PPO_MAX_TOKEN_LEN_PER_GPU=${PPO_MAX_TOKEN_LEN_PER_GPU} is below one sequence (${max_sequence} tokens)"
RUN_DIR=${CKPT_ROOT}/${PROJECT_NAME}/${EXPERIMENT_NAME}
TRAIN_FILE=${DATA_DIR}/${CELL_TASK}/train.parquet
VAL_FILE=${DATA_DIR}/${CELL_TASK}/test.parquet

########################### parameter arrays ###########################
ALGO=(
    "algorithm=${CELL_ALGO}"
)

DATA=(
    "data.train_files=${TRAIN_FILE}"
    "data.val_files=${VAL_FILE}"
    "data.max_prompt_length=${MAX_PROMPT_LENGTH}"
    "data.max_response_length=${MAX_RESPONSE_LENGTH}"
    "data.filter_overlong_prompts=True"
    "data.truncation=error"
    "data.seed=${SEED}"
    # Qwen3 with thinking off, as in the paper.
    "+data.apply_chat_template_kwargs.enable_thinking=False"
)

# The reference code's rewards (data_source sciknoweval / tooluse); the lenient scorers are logged
# as score_lenient. To train on them, append: +reward.custom_reward_function.reward_kwargs.lenient=true
REWARD=(
    "reward.custom_reward_function.path=pkg://srpo_verl.tasks"
    "reward.custom_reward_function.name=compute_score"
)

MODEL=(
    "actor_rollout_ref.model.path=${MODEL_PATH}"
    "actor_rollout_ref.model.use_remove_padding=True"
    "actor_rollout_ref.model.enable_gradient_checkpointing=True"
)

ACTOR=(
    "actor_rollout_ref.actor.strategy=fsdp2"
    "actor_rollout_ref.actor.fsdp_config.dtype=bfloat16"
    "actor_rollout_ref.actor.fsdp_config.param_offload=${PARAM_OFFLOAD}"
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=${PARAM_OFFLOAD}"
    "actor_rollout_ref.actor.use_dynamic_bsz=True"
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=${PPO_MAX_TOKEN_LEN_PER_GPU}"
)

ROLLOUT=(
    "actor_rollout_ref.rollout.name=${INFER_BACKEND}"
    "actor_rollout_ref.rollout.dtype=bfloat16"
    "actor_rollout_ref.rollout.tensor_model_parallel_size=${ROLLOUT_TP}"
    "actor_rollout_ref.rollout.gpu_memory_utilization=${ROLLOUT_GPU_MEM_UTIL}"
)

TRAINER=(
    "trainer.logger=[console,file]"
    "trainer.project_name=${PROJECT_NAME}"
    "trainer.experiment_name=${EXPERIMENT_NAME}"
    "trainer.default_local_dir=${RUN_DIR}"
    "trainer.nnodes=${NNODES}"
    "trainer.n_gpus_per_node=${NGPUS_PER_NODE}"
    "trainer.total_epochs=${TOTAL_EPOCHS}"
    "trainer.total_training_steps=${TOTAL_TRAINING_STEPS}"
    "trainer.val_before_train=True"
    "trainer.test_freq=${TEST_FREQ}"
    "trainer.save_freq=${SAVE_FREQ}"
    "trainer.max_actor_ckpt_to_keep=${MAX_CKPT_TO_KEEP}"
    "trainer.resume_mode=auto"
)

OVERRIDES=("${ALGO[@]}" "${DATA[@]}" "${REWARD[@]}" "${MODEL[@]}" "${ACTOR[@]}" "${ROLLOUT[@]}" "${TRAINER[@]}")

########################### launch ###########################
if [ "${DRY_RUN}" = 1 ]; then
    printf '%s\n' "${OVERRIDES[@]}" "$@"
    exit 0
fi

for file in "${TRAIN_FILE}" "${VAL_FILE}"; do
    [ -f "${file}" ] || die "${file} not found: run recipes/prepare_data.sh (or set DATA_DIR)"
done
# verl's file logger truncates its file when it opens it, so every launch (and resume) writes its
# own; scripts/best_within_budget.py merges the folder by step.
mkdir -p "${RUN_DIR}/logs"
export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-${RUN_DIR}/logs/metrics.$(date +%Y%m%d-%H%M%S).jsonl}

exec "${PYTHON}" -m srpo_verl.main_ppo "${OVERRIDES[@]}" "$@"

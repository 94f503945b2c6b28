"""Every batch field SRPO adds to verl's step, declared once: name, shape, dtype, who writes it, who
reads it, and whether the actor update fetches it from TransferQueue.

The trainer (driver), the worker and the loss use these names; nothing else spells them. Shapes: B
rows, R a row's response length (jagged), K the top-K support; "taught rows" are the rows the teacher
scores, every other row carries an empty (0-length) row of a teacher field.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    shape: str
    dtype: str
    producer: str
    consumer: str
    update_fetches: bool  # the actor update reads it (else it stays behind in TransferQueue)


# Routing (driver, before verl's old-log-prob forward).
TAUGHT = Field("srpo_taught", "(B,)", "int64", "trainer._compute_old_log_prob", "worker.compute_log_prob", False)
ROUTE = Field("srpo_route", "(B,)", "int64", "trainer._compute_old_log_prob", "loss, normaliser", True)
TOPK_IDS = Field(
    "srpo_topk_ids", "(B, R|0, K)", "int32", "worker.compute_log_prob (top-K hook)", "teacher pass, loss", True
)
# The teacher pass (driver -> worker.compute_srpo_teacher -> driver).
TEACHER_INPUT_IDS = Field(
    "srpo_teacher_input_ids", "(B, P'+R) on taught rows", "int64", "trainer (teacher prompts)", "teacher pass", False
)
TEACHER_TOPK = Field("srpo_teacher_topk", "(B, R|0, K)", "float32", "teacher pass", "loss (divergence)", True)
TEACHER_ENTROPY = Field(
    "srpo_teacher_entropy", "(B, R|0)", "float32", "teacher pass", "loss (weights, normaliser), metrics", True
)
TEACHER_ENTROPY_TOPK = Field(
    "srpo_teacher_entropy_topk", "(B, R|0)", "float32", "teacher pass", "loss (entropy_mode=topk_tail), metrics", True
)
TEACHER_LOG_PROB = Field(
    "srpo_teacher_log_prob", "(B, R|0)", "float32", "teacher pass", "loss (sampled-token advantage)", True
)

FIELDS = (
    TAUGHT,
    ROUTE,
    TOPK_IDS,
    TEACHER_INPUT_IDS,
    TEACHER_TOPK,
    TEACHER_ENTROPY,
    TEACHER_ENTROPY_TOPK,
    TEACHER_LOG_PROB,
)
# What compute_srpo_teacher returns per row.
TEACHER_OUTPUTS = (TEACHER_TOPK, TEACHER_ENTROPY, TEACHER_ENTROPY_TOPK, TEACHER_LOG_PROB)
TEACHER_OUTPUT_NAMES = tuple(f.name for f in TEACHER_OUTPUTS)
# Fields only the driver reads: the update does not fetch them.
HOST_ONLY = tuple(f.name for f in FIELDS if not f.update_fetches)

# Returned per rank by worker.srpo_ema_update beside its metrics; the trainer sums it, logs
# srpo/teacher_pass_rows instead.
TEACHER_FORWARD_ROWS = "srpo/teacher_forward_rows"  # sequences the teacher module ran on since the last call

# Inside one worker call (never stored in TransferQueue).
ROW = "srpo_row"  # (B,) the row's index in the call's batch: keys results across verl's micro-batch reordering
LEND = "srpo_lend"  # non-tensor on a micro-batch: the processor's Lend for the loss role
# Per optimiser mini-batch, set by the worker's forward_backward_batch hook (non-tensor).
LOG_MEAN_WEIGHT = "srpo_log_mean_weight"  # log mean exp(-beta H) over the mini-batch's routed tokens, all ranks
NUM_DISTILLED_TOKENS = "srpo_num_distilled_tokens"  # routed valid tokens of the mini-batch, all ranks
# The logits processor's per-token outputs (model_output keys).
DIVERGENCE = "srpo_divergence"
DENSE_WEIGHT = "srpo_dense_weight"  # S of the divergence's gradient, lent to the token log-prob
LABEL_LOG_PROB = "srpo_label_log_prob"  # log p(response token) as the divergence computed it
TOPK_MATCH = "srpo_topk_match"

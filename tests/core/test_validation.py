"""Every invalid hyperparameter or shape raises ValueError naming the argument."""

import numpy as np
import pytest
import torch

from srpo_verl import core_algos as ca

x23 = torch.zeros(2, 3)
x24 = torch.zeros(2, 4)
logits = torch.zeros(2, 5)
idx = torch.zeros(2, 1, dtype=torch.long)
uids = np.array(["a", "b"], dtype=object)

CASES = [
    ("beta", lambda: ca.entropy_weights(x23, x23.bool(), beta=-0.1)),
    ("k", lambda: ca.student_topk(logits, k=0)),
    ("alpha", lambda: ca.generalized_jsd(x23, x23, alpha=1.5)),
    ("alpha", lambda: ca.generalized_jsd(x23, x23, alpha=-0.01)),
    ("alpha", lambda: ca.topk_tail_divergence(logits, idx.float(), idx, alpha=2.0)),
    ("alpha", lambda: ca.full_vocab_divergence(logits, logits, alpha=float("nan"))),
    ("success_threshold", lambda: ca.correctness(torch.zeros(2), success_threshold=float("nan"))),
    ("success_threshold", lambda: ca.routing_mask(torch.zeros(2), uids, success_threshold=float("inf"))),
    ("rewards", lambda: ca.correctness(torch.tensor([0.0, float("nan")]))),
    ("rewards", lambda: ca.correctness(torch.tensor([0.0, float("inf")]))),
    ("rewards", lambda: ca.correctness(torch.zeros(2, 3))),
    ("rewards", lambda: ca.grpo_advantage(torch.tensor([float("nan"), 1.0]), uids)),
    ("index", lambda: ca.grpo_advantage(torch.zeros(3), uids)),
    ("index", lambda: ca.teacher_availability(torch.zeros(3, dtype=torch.bool), uids)),
    ("has_feedback", lambda: ca.routing_mask(torch.zeros(2), uids, has_feedback=torch.zeros(3, dtype=torch.bool))),
    ("mix_lambda", lambda: ca.advantage_mix(torch.zeros(2), x23, mix_lambda=1.1)),
    ("mix_lambda", lambda: ca.advantage_mix(torch.zeros(2), x23, mix_lambda=-0.5)),
    ("is_clip", lambda: ca.sdpo_token_loss(x23, x23, x23, is_clip=0.0)),
    ("mix", lambda: ca.trust_region_teacher_log_probs(x23, x23, mix=1.2)),
    ("chunk_size", lambda: ca.gather_log_softmax(logits, idx, chunk_size=0)),
    ("chunk_size", lambda: ca.teacher_entropy(logits, chunk_size=0)),
    ("clip_ratio_c", lambda: ca.ppo_clip_token_loss(x23, x23, x23, clip_ratio_c=1.0)),
    ("clip_ratio_low", lambda: ca.ppo_clip_token_loss(x23, x23, x23, clip_ratio_low=-0.1)),
    ("clip_ratio_high", lambda: ca.ppo_clip_token_loss(x23, x23, x23, clip_ratio_high=-0.1)),
    ("dp_size", lambda: ca.srpo_loss(x23, x23, x23.bool(), x23, x23, num_tokens=3, dp_size=0)),
    ("num_tokens", lambda: ca.srpo_loss(x23, x23, x23.bool(), x23, x23, num_tokens=None, dp_size=2)),
    ("num_tokens", lambda: ca.srpo_loss(x23, x23, x23.bool(), x23, x23, num_tokens=-1)),
    # Mismatched shapes name both arguments.
    ("old_log_prob", lambda: ca.ppo_clip_token_loss(x23, x24, x23)),
    ("advantages", lambda: ca.ppo_clip_token_loss(x23, x23, torch.zeros(3))),
    ("rollout_is_weights", lambda: ca.ppo_clip_token_loss(x23, x23, x23, rollout_is_weights=x24)),
    ("teacher_log_probs", lambda: ca.generalized_jsd(x23, x24)),
    ("teacher_logits", lambda: ca.full_vocab_divergence(x23, x24)),
    ("index", lambda: ca.gather_log_softmax(logits, torch.zeros(3, 1, dtype=torch.long))),
    ("topk_index", lambda: ca.topk_tail_divergence(logits, torch.zeros(2, 2), idx)),
    ("old_log_prob", lambda: ca.sampled_token_advantage(x23, x24)),
    ("sdpo_advantage", lambda: ca.advantage_mix(x24, x23)),
    ("old_log_prob", lambda: ca.sdpo_token_loss(x23, x23, x24)),
    ("sdpo_token_mask", lambda: ca.entropy_weights(x23, x24.bool())),
    ("response_mask", lambda: ca.srpo_loss(x23, x23, x23.bool(), x23, x24, num_tokens=1)),
    ("sdpo_mask", lambda: ca.srpo_loss(x23, x23, torch.zeros(3, dtype=torch.bool), x23, x23, num_tokens=1)),
    ("ref_log_probs", lambda: ca.trust_region_teacher_log_probs(x23, x24, mix=0.5)),
]


@pytest.mark.parametrize("name, call", CASES, ids=[f"{i}-{name}" for i, (name, _) in enumerate(CASES)])
def test_value_error_names_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()

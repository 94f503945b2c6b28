"""The `hf` rollout server on its own (no Ray, no trainer): sampling, log-probs, batching, abort.

The server object is used directly; verl's load balancer would call the same async methods
through a Ray actor handle.
"""

import asyncio
import math
from collections import Counter

import pytest
import torch

from srpo_verl.cpu.hf_rollout import HFServer, SamplingKey, filter_logits, request_seed

PROMPTS = [[1, 90, 88, 74, 87, 4, 22, 23, 16, 24, 25, 34, 2, 4], [1, 90, 4, 29, 16, 31, 34, 2], [1, 40, 41, 42]]


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    pending = asyncio.all_tasks(loop)  # the servers' batcher tasks
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


@pytest.fixture(scope="module")
def configs(tiny_model_path):
    from omegaconf import OmegaConf

    from verl.workers.config import RolloutConfig

    rollout = RolloutConfig(
        name="hf", dtype="float32", tensor_model_parallel_size=1, prompt_length=32, response_length=400, seed=7
    )
    model = OmegaConf.create(
        {
            "_target_": "verl.workers.config.HFModelConfig",
            "path": tiny_model_path,
            "override_config": {"attn_implementation": "sdpa"},
        }
    )
    return rollout, model


@pytest.fixture
def make_server(loop, configs):
    def make() -> HFServer:
        server = HFServer(*configs)
        loop.run_until_complete(server.launch_server())
        return server

    return make


def params(temperature=1.0, top_k=-1, top_p=1.0, max_tokens=6, **extra):
    return dict(temperature=temperature, top_k=top_k, top_p=top_p, logprobs=True, max_tokens=max_tokens, **extra)


def generate_all(loop, server, requests):
    """Send (prompt_ids, sampling_params) requests concurrently, as the agent loop does."""

    async def run():
        return await asyncio.gather(
            *[server.generate(p, dict(sp), request_id=f"r{i}") for i, (p, sp) in enumerate(requests)]
        )

    return loop.run_until_complete(run())


def reference_log_probs(model, prompt, tokens, temperature=1.0):
    """log_softmax(logits / T) of `tokens` from one unpadded forward of prompt + tokens."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature  # (T, V)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_max_tokens_follows_vllm_rule(make_server):
    server = make_server()  # prompt_length 32, response_length 400
    assert server._max_tokens({"max_tokens": 5}, 10) == 5
    assert server._max_tokens({"max_new_tokens": 7}, 10) == 7
    assert server._max_tokens({}, 10) == 400
    assert server._max_tokens({}, 40) == 392  # prompt longer than prompt_length eats the budget
    assert server._max_tokens({"max_tokens": 1000}, 30) == 402  # clamped to max_model_len - prompt
    with pytest.raises(ValueError, match="no room"):
        server._max_tokens({}, 432)


def test_log_probs_are_processed_log_softmax_of_the_model(loop, make_server):
    server = make_server()
    for temperature in (0.0, 0.7, 1.0):
        (out,) = generate_all(loop, server, [(PROMPTS[0], params(temperature=temperature, max_tokens=8))])
        ref = reference_log_probs(server.model, PROMPTS[0], out.token_ids, temperature or 1.0)
        assert torch.allclose(torch.tensor(out.log_probs), ref, atol=1e-5), temperature
    (out,) = generate_all(loop, server, [(PROMPTS[0], dict(params(), logprobs=False))])
    assert out.log_probs is None


def test_greedy_is_argmax_and_batched_left_padding_changes_nothing(loop, make_server):
    server = make_server()
    single = [generate_all(loop, server, [(p, params(temperature=0.0, max_tokens=8))])[0] for p in PROMPTS]
    batched = generate_all(loop, server, [(p, params(temperature=0.0, max_tokens=8)) for p in PROMPTS])
    for one, many, prompt in zip(single, batched, PROMPTS):
        assert one.token_ids == many.token_ids
        assert max(abs(a - b) for a, b in zip(one.log_probs, many.log_probs)) < 1e-5
        ids = torch.tensor([prompt + one.token_ids])
        with torch.no_grad():
            argmax = server.model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()
        assert one.token_ids == argmax


def test_generation_stops_at_eos_and_keeps_it(loop, make_server):
    server = make_server()
    server.eos_ids = set()
    (free,) = generate_all(loop, server, [(PROMPTS[1], params(temperature=0.0, max_tokens=6))])
    assert len(free.token_ids) == 6 and free.stop_reason == "completed"
    server.eos_ids = {free.token_ids[2]}
    (stopped,) = generate_all(loop, server, [(PROMPTS[1], params(temperature=0.0, max_tokens=6))])
    first_eos = next(i for i, t in enumerate(free.token_ids) if t in server.eos_ids)
    assert stopped.token_ids == free.token_ids[: first_eos + 1]


def test_concurrent_requests_share_one_batched_decode(loop, make_server, monkeypatch):
    server = make_server()
    server.eos_ids = set()  # every row runs to max_tokens
    calls = []
    original = server._decode
    monkeypatch.setattr(server, "_decode", lambda rows, key: calls.append(len(rows)) or original(rows, key))
    outs = generate_all(loop, server, [(PROMPTS[i % 3], params(max_tokens=4)) for i in range(12)])
    assert calls == [12]
    assert all(len(o.token_ids) == 4 for o in outs)


def test_seeded_sampling_is_reproducible_in_any_arrival_order(loop, make_server):
    requests = [(p, params(max_tokens=6)) for p in PROMPTS for _ in range(4)]  # 4 samples per prompt

    def samples(server, order):
        outs = generate_all(loop, server, [requests[i] for i in order])
        by_prompt = {}
        for i, out in zip(order, outs):
            by_prompt.setdefault(tuple(requests[i][0]), Counter())[tuple(out.token_ids)] += 1
        return by_prompt

    first = samples(make_server(), list(range(len(requests))))
    again = samples(make_server(), list(reversed(range(len(requests)))))
    assert first == again
    # The 4 samples of one prompt are distinct draws, not one draw repeated.
    assert all(len(counter) > 1 for counter in first.values())
    # A new weight version draws new samples.
    server = make_server()
    loop.run_until_complete(server.set_global_steps(3))
    assert samples(server, list(range(len(requests)))) != first


def test_request_seed_depends_on_every_component():
    key = SamplingKey(1.0, -1, 1.0)
    base = request_seed(1, 0, [1, 2], key, 0)
    assert base == request_seed(1, 0, [1, 2], key, 0)
    variants = [
        request_seed(2, 0, [1, 2], key, 0),
        request_seed(1, 1, [1, 2], key, 0),
        request_seed(1, 0, [1, 3], key, 0),
        request_seed(1, 0, [1, 2], SamplingKey(0.5, -1, 1.0), 0),
        request_seed(1, 0, [1, 2], key, 1),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_filter_logits_hand_worked():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    inf = float("-inf")
    assert filter_logits(logits, 2, 1.0).tolist() == [[3.0, 2.0, inf, inf]]
    # probs = [0.644, 0.237, 0.087, 0.032]; a token is kept while the mass ranked above it is < p.
    assert filter_logits(logits, -1, 0.7).tolist() == [[3.0, 2.0, inf, inf]]
    assert filter_logits(logits, -1, 0.5).tolist() == [[3.0, inf, inf, inf]]
    assert filter_logits(logits, -1, 0.9).tolist() == [[3.0, 2.0, 1.0, inf]]
    # top-p applies to the top-k distribution renormalised: [0.665, 0.245, 0.090] after k=3.
    assert filter_logits(logits, 3, 0.9).tolist() == [[3.0, 2.0, inf, inf]]
    assert filter_logits(logits, 3, 0.95).tolist() == [[3.0, 2.0, 1.0, inf]]
    assert filter_logits(logits, -1, 1.0).tolist() == logits.tolist()


def test_top_k_one_and_tiny_top_p_are_greedy(loop, make_server):
    server = make_server()
    (greedy,) = generate_all(loop, server, [(PROMPTS[0], params(temperature=0.0, max_tokens=6))])
    for sp in (params(temperature=1.0, top_k=1), params(temperature=1.0, top_p=1e-6)):
        (out,) = generate_all(loop, server, [(PROMPTS[0], sp)])
        assert out.token_ids == greedy.token_ids


def test_weight_update_changes_generation_and_reports_version(loop, make_server):
    server = make_server()
    (before,) = generate_all(loop, server, [(PROMPTS[0], params(temperature=0.0, max_tokens=6))])
    checksum = loop.run_until_complete(server.param_checksum())
    state = {name: tensor + 0.05 * torch.randn_like(tensor) for name, tensor in server.model.state_dict().items()}
    loop.run_until_complete(server.update_weights(state, global_steps=5))
    (after,) = generate_all(loop, server, [(PROMPTS[0], params(temperature=0.0, max_tokens=6))])
    assert loop.run_until_complete(server.param_checksum()) != checksum
    assert after.extra_fields["global_steps"] == 5 and before.extra_fields["global_steps"] is None
    assert before.log_probs != after.log_probs
    ref = reference_log_probs(server.model, PROMPTS[0], after.token_ids)
    assert torch.allclose(torch.tensor(after.log_probs), ref, atol=1e-5)
    with pytest.raises(RuntimeError, match="unexpected"):
        loop.run_until_complete(server.update_weights({"not.a.weight": torch.zeros(1)}, global_steps=6))


def test_abort_returns_partial_outputs_and_holds_new_requests(loop, make_server):
    server = make_server()
    server.eos_ids = set()  # the long request cannot finish early

    async def scenario():
        running = asyncio.ensure_future(server.generate(PROMPTS[0], params(max_tokens=400), request_id="long"))
        while not (server._inflight and server._inflight[0].tokens):  # wait until it is decoding
            await asyncio.sleep(0.005)
        result = await server.abort_all_requests()
        partial = await running
        parked = asyncio.ensure_future(server.generate(PROMPTS[1], params(max_tokens=2), request_id="parked"))
        await asyncio.sleep(0.2)
        parked_before_resume = parked.done()
        await server.resume_generation()
        resumed = await parked
        await server.abort_all_requests(reject_request=True)
        rejected = await server.generate(PROMPTS[1], params(max_tokens=2), request_id="rejected")
        await server.resume_generation()
        return result, partial, parked_before_resume, resumed, rejected

    result, partial, parked_before_resume, resumed, rejected = loop.run_until_complete(scenario())
    assert result == {"aborted_count": 1, "request_ids": ["long"]}
    assert partial.stop_reason == "aborted" and 0 < len(partial.token_ids) < 400
    assert len(partial.log_probs) == len(partial.token_ids)
    assert not parked_before_resume and resumed.stop_reason == "completed" and len(resumed.token_ids) == 2
    assert rejected.stop_reason == "aborted" and rejected.token_ids == []
    assert math.isfinite(sum(partial.log_probs))

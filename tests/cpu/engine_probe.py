"""Run verl's actor worker (FSDP2 engine on CPU) and the `hf` rollout server in ONE process.

`python tests/cpu/engine_probe.py MODEL_PATH` prints one line `PROBE {json}` with the measured
log-prob differences; `test_engine_logprobs.py` runs it in a subprocess (the CPU backend and
torch.distributed change process-wide state) and asserts on the numbers.

Steps: build `ActorRolloutRefWorker(role="actor")` from srpo_trainer.yaml with `platform=cpu`;
compare its log-probs with a plain transformers forward of the same checkpoint; sync its weights
into an `HFServer` through `HFServerAdapter.update_weights` (the code path the trainer uses, with
the Ray handle replaced by a direct call); compare the server's own log-probs of what it generated
with the engine's; take one optimizer step; check that the stale server disagrees and the re-synced
server agrees again.
"""

import asyncio
import json
import sys

from srpo_verl.cpu.local import as_batch, compose, local_env, response_log_probs, update_info

local_env()

import torch  # noqa: E402

BATCH = 16  # rollout requests; also the engine's micro-batch size


def tiny_config(model_path: str):
    return compose(
        [
            "algorithm=grpo",
            "platform=cpu",
            f"actor_rollout_ref.model.path={model_path}",
            "data.max_prompt_length=32",
            "data.max_response_length=8",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={BATCH}",
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={BATCH}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={BATCH}",
            "actor_rollout_ref.actor.optim.lr=0.01",
            "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        ]
    )


def max_diff(a, b) -> float:
    return max(float((torch.as_tensor(x) - torch.as_tensor(y)).abs().max()) for x, y in zip(a, b))


class DirectHandle:
    """Stands in for the Ray actor handle: `handle.method.remote(...)` awaits `server.method(...)`."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        method = getattr(self._target, name)
        return type("Remote", (), {"remote": staticmethod(lambda *a, **k: method(*a, **k))})


def main(model_path: str) -> dict:
    import verl  # noqa: F401  (loads the plugin: the CPU backend activates here)
    from transformers import AutoModelForCausalLM

    from srpo_verl.cpu.hf_rollout import HFServer, HFServerAdapter
    from verl.workers.engine_workers import ActorRolloutRefWorker

    config = tiny_config(model_path)
    worker = ActorRolloutRefWorker(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    result = {"engine": type(worker.actor.engine).__name__}

    # 1. Engine vs a plain transformers forward of the same checkpoint (fp32).
    gen = torch.Generator().manual_seed(0)
    sequences = [
        (
            torch.randint(4, 100, (10 + i,), generator=gen).tolist(),  # prompt
            torch.randint(4, 100, (2 + i % 5,), generator=gen).tolist(),  # response
        )
        for i in range(BATCH)
    ]
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa").eval()
    reference = []
    for prompt, response in sequences:
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = hf(ids).logits[0, len(prompt) - 1 : -1]
        reference.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0])
    result["engine_vs_hf_max_abs"] = max_diff(response_log_probs(worker, sequences), reference)

    # 2. Weight sync through the adapter, then the server's log-probs of its own samples.
    rollout_config = config.actor_rollout_ref.rollout
    server = HFServer(rollout_config, config.actor_rollout_ref.model)
    adapter = HFServerAdapter(rollout_config, config.actor_rollout_ref.model, device_mesh=None)
    adapter._server = DirectHandle(server)
    loop = asyncio.new_event_loop()

    def sync(step):
        params, _ = worker.actor.engine.get_per_tensor_param()
        loop.run_until_complete(adapter.update_weights(params, global_steps=step))
        return loop.run_until_complete(server.param_checksum())

    def rollout(step_prompts):
        async def go():
            sampling = dict(temperature=1.0, top_p=1.0, top_k=-1, logprobs=True, max_tokens=8)
            return await asyncio.gather(
                *[server.generate(p, dict(sampling), request_id=str(i)) for i, p in enumerate(step_prompts)]
            )

        return loop.run_until_complete(go())

    loop.run_until_complete(server.launch_server())
    result["checksum_synced_0"] = sync(0)
    result["checksum_engine_0"] = float(sum(p.double().sum() for p in hf.parameters()))
    prompts = [p for p, _ in sequences]
    outs = rollout(prompts)
    samples = [(p, o.token_ids) for p, o in zip(prompts, outs)]
    result["server_vs_engine_max_abs"] = max_diff([o.log_probs for o in outs], response_log_probs(worker, samples))
    result["server_weight_version"] = outs[0].extra_fields["global_steps"]

    # 3. One optimizer step on those samples (ratio 1, advantages +1/-1), then stale vs re-synced.
    old = response_log_probs(worker, samples)
    advantages = [torch.full((len(r),), 1.0 if i % 2 else -1.0) for i, (_, r) in enumerate(samples)]
    data = as_batch(samples, old_log_probs=old, advantages=advantages, rollout_log_probs=old)
    update_info(data, BATCH)
    worker.update_actor(data)
    new = response_log_probs(worker, samples)
    result["stale_server_vs_engine_max_abs"] = max_diff([o.log_probs for o in outs], new)
    result["checksum_synced_1"] = sync(1)
    outs = rollout(prompts)
    samples = [(p, o.token_ids) for p, o in zip(prompts, outs)]
    result["resynced_server_vs_engine_max_abs"] = max_diff(
        [o.log_probs for o in outs], response_log_probs(worker, samples)
    )
    result["resynced_weight_version"] = outs[0].extra_fields["global_steps"]
    for task in asyncio.all_tasks(loop):
        task.cancel()
    torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(sys.argv[1])), flush=True)

"""Rollout backend `rollout.name=hf`: HuggingFace model forward passes in a Ray actor, for CPU runs.

verl 0.9.1 reaches a rollout only through an inference-server actor (vLLM, SGLang, TRT-LLM), none
of which runs on CPU. This module supplies the three pieces verl's rollout registries expect:

* `HFServerAdapter` (a `BaseRollout`): lives in each training worker; forwards weight updates from
  the FSDP engine to the server. Sleep/resume are no-ops (weights stay in host memory).
* `HFServer` (in `hf_server.py`, which imports no verl, so that the processes holding its actor
  handle do not import verl for it): the Ray actor verl's load balancer sends one `generate`
  request per sample to. A micro-batcher groups concurrent requests by sampling parameters and
  decodes them with a KV cache in fixed-shape chunks (DECODE_ROWS); each row stops at its own EOS
  or token budget.
* `HFReplica` (a `RolloutReplica`): launches one server per replica, named `hf_server_{replica}_0`.

Log-probs are verl's "processed" ones: log_softmax(logits / T) over the whole vocabulary (T = 1
when greedy), the quantity the training engine recomputes, so rollout IS weights are ~1.

Sampling is reproducible given a seed: each request draws from its own `torch.Generator`, seeded
from (rollout seed or `sampling_params["seed"]`, weight version, prompt tokens, sampling parameters,
and k = how many identical requests this weight version has already served). The seed therefore
does not depend on batch composition or arrival order; identical requests (the n samples of a
GRPO group) are exchangeable, so only which session gets which of them can vary between runs.
"""

from __future__ import annotations

import ray

from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica

from srpo_verl.cpu.hf_server import (  # noqa: F401 - the server and its helpers, used here and by tests
    BATCH_MAX_WAIT_S,
    BATCH_QUIET_S,
    DECODE_ROWS,
    HFServer,
    SamplingKey,
    _Request,
    filter_logits,
    request_seed,
    server_name,
)


# ----------------------------------------------------------------------------------------------
# Adapter (in the training worker)
# ----------------------------------------------------------------------------------------------


class HFServerAdapter(BaseRollout):
    """The training worker's handle on its replica's `HFServer`.

    Only the replica's first rank talks to the server; every rank still drains the weight
    generator, because producing each full tensor is a collective over the FSDP ranks.
    """

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        import os

        rank = int(os.environ.get("RANK", "0"))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self._server = None

    @property
    def is_leader_rank(self) -> bool:
        return self.rollout_rank == 0

    def _server_handle(self):
        # Looked up lazily: the server is launched after the worker's init_model.
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps=None, **kwargs):
        from verl.workers.rollout.utils import ensure_async_iterator

        if wire_format != "named_tensors":
            raise NotImplementedError(f"rollout.name=hf receives full named tensors only, not {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("rollout.name=hf does not take LoRA adapters; set model.lora.merge=True")
        state = {}
        async for name, tensor in ensure_async_iterator(weights):
            if self.is_leader_rank:
                state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader_rank:
            await self._server_handle().update_weights.remote(state, global_steps)


# ----------------------------------------------------------------------------------------------
# Replica (in the TaskRunner)
# ----------------------------------------------------------------------------------------------


class HFReplica(RolloutReplica):
    """One `HFServer` per replica. In hybrid mode it shares the host with the training workers."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self):
        kind = "reward_" if self.is_reward_model else "teacher_" if self.is_teacher_model else ""
        name = server_name(self.replica_rank, 0, kind, self.name_suffix)
        # num_cpus=0: the server does not hold one of Ray's CPU slots (they are all logical here).
        server = (
            ray.remote(HFServer)
            .options(name=name, max_concurrency=self.max_concurrency, num_cpus=0)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.launch_server.remote()
        self.servers = [server]
        self._server_handle = server
        # Only a key in the load balancer's {address: handle} map; nothing listens on it.
        self._server_address = f"{name}.local:0"

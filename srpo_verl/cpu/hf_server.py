"""The `hf` rollout's generation server: an HF causal LM behind a request micro-batcher, a Ray actor.

Split from `hf_rollout.py` (the adapter and replica verl's registries load) so that this module
imports no verl at import time: every process that receives a server's actor handle imports the
module that defines its class, and verl's load balancer and agent loop receive it. (The server's
own process imports verl's config and dtype helpers when it builds the model.)
See `hf_rollout.py` for the batching, reproducibility and log-prob conventions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

# The micro-batcher closes a batch once no new request arrived for BATCH_QUIET_S (or when it holds
# rollout.max_num_seqs requests, or after BATCH_MAX_WAIT_S). On a loaded 2-core host the agent loop
# issues a step's 64 requests over ~0.3 s; one batched decode of 64 costs about as much as one of 8.
BATCH_QUIET_S = 0.05
BATCH_MAX_WAIT_S = 0.3

# Which requests share a batch depends on arrival timing, and a CPU forward's result for one row
# depends on the batch's shape (matmul blocking changes with the row count and padded width;
# ~5e-7 in log-probs for the tiny model), though not on the other rows' content. Rollout log-probs
# feed the trainer's IS weights, so a timing-dependent shape made two launches of one seed
# diverge from step 2 on. Every decode therefore runs in chunks of exactly DECODE_ROWS rows
# (topped up with copies of a real row, whose outputs are dropped) padded to a width that depends
# on the prompt's own length only: a request's tokens and log-probs are then bit-identical
# however the requests were batched.
DECODE_ROWS = 16


def server_name(replica_rank: int, node_rank: int = 0, kind: str = "", suffix: str = "") -> str:
    """Ray actor name of a replica's server; `kind` is "" (policy), "reward_" or "teacher_"."""
    return f"hf_server_{kind}{replica_rank}_{node_rank}{suffix}"


# ----------------------------------------------------------------------------------------------
# Server (a Ray actor; also usable as a plain object in tests)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingKey:
    """Requests with equal keys can share one batched decode."""

    temperature: float
    top_k: int
    top_p: float


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    key: SamplingKey
    seed: int
    future: asyncio.Future
    tokens: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)


def request_seed(base_seed: int, weight_version: Optional[int], prompt_ids, key: SamplingKey, k: int) -> int:
    """A 63-bit seed from everything that identifies the k-th identical request of a weight version."""
    prompt = ",".join(map(str, prompt_ids))
    text = f"{base_seed}|{weight_version}|{key.temperature}|{key.top_k}|{key.top_p}|{k}|{prompt}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask to -inf what top-k (k > 0) and then top-p (p < 1) exclude; always keeps the argmax."""
    logits = logits.clone()  # (B, V)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits.masked_fill_(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        # A token is dropped when the mass of the tokens ranked above it already reaches top_p.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        drop[:, 0] = False
        logits.scatter_(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


class HFServer:
    """One replica's generation server: an HF causal LM with a request micro-batcher.

    Methods called by verl: generate, wake_up, sleep, clear_kv_cache, release_kv_cache,
    resume_kv_cache, abort_all_requests, resume_generation, abort_request, set_global_steps,
    start_profile, stop_profile. `update_weights` is called by `HFServerAdapter`.
    """

    def __init__(self, config, model_config, replica_rank: int = 0, node_rank: int = 0):
        from verl.utils.config import omega_conf_to_dataclass

        self.config = omega_conf_to_dataclass(config)
        self._model_config_node = model_config
        self.replica_rank = replica_rank
        self.node_rank = node_rank
        self.model = None
        self.eos_ids: set[int] = set()
        self.pad_id = 0
        self.global_steps: Optional[int] = None
        self._occurrences: dict[tuple, int] = {}
        self._queue: list[_Request] = []
        self._wakeup: Optional[asyncio.Event] = None
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock: Optional[asyncio.Lock] = None
        self._inflight: list[_Request] = []
        self._idle: Optional[asyncio.Event] = None
        # Abort gate (the semantics of vLLM's server): closed by abort_all_requests, opened by
        # resume_generation; while closed, new requests wait, or are refused when `_rejecting`.
        self._abort_running = False
        self._paused = False
        self._rejecting = False
        self._resume_event: Optional[asyncio.Event] = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def launch_server(self) -> None:
        """Load the model and tokenizer from `actor_rollout_ref.model` (CPU, rollout.dtype)."""
        from transformers import AutoModelForCausalLM

        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.torch_dtypes import PrecisionType

        model_config = omega_conf_to_dataclass(self._model_config_node)
        dtype = PrecisionType.to_dtype(self.config.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_config.local_path,
            config=model_config.hf_config,
            dtype=dtype,
            trust_remote_code=model_config.trust_remote_code,
        ).eval()
        tokenizer = model_config.tokenizer
        eos = getattr(model_config.generation_config, "eos_token_id", None) if model_config.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)

    def _ensure_loop_state(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._model_lock = asyncio.Lock()
            self._idle = asyncio.Event()
            self._idle.set()
            self._resume_event = asyncio.Event()
            self._resume_event.set()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    # -- generation -----------------------------------------------------------------------------

    def _max_tokens(self, sampling_params: dict, prompt_len: int) -> int:
        """vLLM's rule: explicit max_tokens/max_new_tokens, else what fits the configured lengths."""
        max_model_len = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)
        room = max_model_len - prompt_len
        if room < 1:
            raise ValueError(f"prompt of {prompt_len} tokens leaves no room within max_model_len={max_model_len}")
        if "max_tokens" in sampling_params:
            wanted = sampling_params["max_tokens"]
        elif "max_new_tokens" in sampling_params:
            wanted = sampling_params["max_new_tokens"]
        else:
            wanted = min(
                self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len
            )
        return max(1, min(int(wanted), room))

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data=None,
        video_data=None,
        **kwargs,
    ):
        """One sample's tokens and log-probs, as verl's `TokenOutput`."""
        from verl.workers.rollout.replica import TokenOutput

        if image_data is not None or video_data is not None or kwargs.get("audio_data") is not None:
            raise NotImplementedError("rollout.name=hf is text-only")
        if float(sampling_params.get("repetition_penalty", 1.0)) != 1.0:
            raise NotImplementedError("rollout.name=hf supports repetition_penalty=1.0 only")
        self._ensure_loop_state()
        while self._paused:
            if self._rejecting:
                return self._aborted_output()
            await self._resume_event.wait()

        prompt_ids = [int(t) for t in prompt_ids]
        key = SamplingKey(
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_k=int(sampling_params.get("top_k", -1) or -1),
            top_p=float(sampling_params.get("top_p", 1.0)),
        )
        occurrence_key = (key, tuple(prompt_ids))
        k = self._occurrences.get(occurrence_key, 0)
        self._occurrences[occurrence_key] = k + 1
        base_seed = int(sampling_params.get("seed", self.config.seed))
        request = _Request(
            request_id=request_id,
            prompt_ids=prompt_ids,
            max_tokens=self._max_tokens(sampling_params, len(prompt_ids)),
            key=key,
            seed=request_seed(base_seed, self.global_steps, prompt_ids, key, k),
            future=asyncio.get_running_loop().create_future(),
        )
        self._queue.append(request)
        self._wakeup.set()
        stop_reason = await request.future
        return TokenOutput(
            token_ids=request.tokens,
            log_probs=request.log_probs if sampling_params.get("logprobs") else None,
            stop_reason=stop_reason,
            extra_fields={"global_steps": self.global_steps},
        )

    def _aborted_output(self):
        from verl.workers.rollout.replica import TokenOutput

        return TokenOutput(
            token_ids=[], log_probs=None, stop_reason="aborted", extra_fields={"global_steps": self.global_steps}
        )

    async def _batch_loop(self) -> None:
        max_batch = max(1, int(self.config.max_num_seqs))
        while True:
            await self._wakeup.wait()
            start, seen = time.monotonic(), -1
            while len(self._queue) != seen and len(self._queue) < max_batch:
                if time.monotonic() - start > BATCH_MAX_WAIT_S:
                    break
                seen = len(self._queue)
                await asyncio.sleep(BATCH_QUIET_S)
            batch, self._queue = self._queue[:max_batch], self._queue[max_batch:]
            if not self._queue:
                self._wakeup.clear()
            groups: dict[SamplingKey, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.key, []).append(request)
            self._inflight = batch
            self._idle.clear()
            try:
                for key, rows in groups.items():
                    await self._run_group(rows, key)
            finally:
                self._inflight = []
                self._idle.set()

    async def _run_group(self, rows: list[_Request], key: SamplingKey) -> None:
        async with self._model_lock:
            try:
                started = time.monotonic()
                reasons = await asyncio.to_thread(self._decode, rows, key)
                logger.debug("hf rollout: decoded %d requests in %.3f s", len(rows), time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                logger.exception("hf rollout: batched decode failed")
                reasons = exc
        for i, request in enumerate(rows):
            if request.future.done():
                continue
            if isinstance(reasons, Exception):
                request.future.set_exception(reasons)
            else:
                request.future.set_result(reasons[i])

    def _prompt_width(self, prompt_len: int) -> int:
        """Padded prompt width: rollout.prompt_length, or its next multiple for a longer prompt.

        A function of the request alone, never of the batch (see DECODE_ROWS)."""
        unit = max(1, int(self.config.prompt_length))
        return unit * max(1, -(-prompt_len // unit))

    def _decode(self, rows: list[_Request], key: SamplingKey) -> list[str]:
        """Decode `rows` in fixed-shape chunks (DECODE_ROWS rows, a per-request width); fills
        request.tokens/log_probs and returns each row's stop reason."""
        reasons: list[str] = ["completed"] * len(rows)
        by_width: dict[int, list[int]] = {}
        for i, request in enumerate(rows):
            by_width.setdefault(self._prompt_width(len(request.prompt_ids)), []).append(i)
        for width, indices in by_width.items():
            for start in range(0, len(indices), DECODE_ROWS):
                part = indices[start : start + DECODE_ROWS]
                for i, reason in zip(part, self._decode_chunk([rows[i] for i in part], key, width)):
                    reasons[i] = reason
        return reasons

    @torch.no_grad()
    def _decode_chunk(self, rows: list[_Request], key: SamplingKey, width: int) -> list[str]:
        """Left-pad to `width`, top up to DECODE_ROWS rows, decode all with one KV cache."""
        n = len(rows)
        if self._abort_running:
            return ["aborted"] * n
        prompts = [r.prompt_ids for r in rows] + [rows[0].prompt_ids] * (DECODE_ROWS - n)
        batch = len(prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)  # (B, L)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[i, width - len(prompt) :] = 1
        # Positions count real tokens only, as the trainer's unpadded forward does.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        generators = [torch.Generator().manual_seed(r.seed) for r in rows]
        greedy = key.temperature <= 0.0
        scale = 1.0 if greedy else key.temperature
        finished = [False] * n
        reasons = ["completed"] * n
        past = None
        for _step in range(max(r.max_tokens for r in rows)):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float() / scale  # (B, V)
            log_probs = torch.log_softmax(logits, dim=-1)  # (B, V)
            # Whole fixed-shape batch in every op; filler rows (>= n) are fed row 0's token, then dropped.
            if greedy:
                next_tokens = logits.argmax(dim=-1)[:n]  # (n,)
            else:
                probs = torch.softmax(filter_logits(logits, key.top_k, key.top_p), dim=-1)  # (B, V)
                next_tokens = torch.stack(
                    [torch.multinomial(probs[i], 1, generator=generators[i])[0] for i in range(n)]
                )  # (n,)
            for i, request in enumerate(rows):
                if finished[i]:
                    continue
                token = int(next_tokens[i])
                request.tokens.append(token)
                request.log_probs.append(float(log_probs[i, token]))
                if (token in self.eos_ids and not self.config.ignore_eos) or len(request.tokens) >= request.max_tokens:
                    finished[i] = True
            if self._abort_running:
                for i in range(n):
                    if not finished[i]:
                        finished[i], reasons[i] = True, "aborted"
            if all(finished):
                break
            fed = torch.cat([next_tokens, next_tokens[:1].expand(batch - n)])  # (B,)
            input_ids = fed.unsqueeze(-1)  # (B, 1)
            attention_mask = torch.cat([attention_mask, torch.ones((batch, 1), dtype=torch.long)], dim=-1)
            position_ids = position_ids[:, -1:] + 1  # (B, 1)
        return reasons

    # -- weights --------------------------------------------------------------------------------

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> None:
        """Load the trainer's full HF-named tensors; the weight version becomes `global_steps`."""
        self._ensure_loop_state()
        async with self._model_lock:
            result = self.model.load_state_dict(state_dict, strict=False)
            tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
            missing = set(result.missing_keys) - tied
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"hf rollout weight update mismatch: missing={sorted(missing)} unexpected={result.unexpected_keys}"
                )
            self.global_steps = global_steps
            self._occurrences.clear()

    async def param_checksum(self) -> float:
        """Sum of all parameters (float64); changes when an update changes the weights."""
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # -- abort gate -----------------------------------------------------------------------------

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Stop queued and running requests (they return stop_reason="aborted" with the tokens
        generated so far) and hold new ones until `resume_generation`."""
        self._ensure_loop_state()
        self._paused, self._rejecting = True, reject_request
        self._resume_event.clear()
        aborted = [r.request_id for r in self._queue + self._inflight if not r.future.done()]
        for request in self._queue:
            if not request.future.done():
                request.future.set_result("aborted")
        self._queue = []
        # The running batch sees the flag after its current token and returns what it has.
        self._abort_running = True
        await self._idle.wait()
        self._abort_running = False
        return {"aborted_count": len(aborted), "request_ids": aborted}

    async def resume_generation(self) -> None:
        self._ensure_loop_state()
        self._paused = self._rejecting = False
        self._resume_event.set()

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        for request in self._queue:
            if request.request_id == request_id and not request.future.done():
                self._queue.remove(request)
                request.future.set_result("aborted")
                return {"aborted": True, "request_id": request_id}
        return {"aborted": False, "request_id": request_id, "error": f"Request {request_id} not queued"}

    # -- memory management and profiling: nothing to free or trace on CPU -----------------------

    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        while self._queue or self._inflight:
            await asyncio.sleep(0.01)

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None

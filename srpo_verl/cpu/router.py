"""The rollout load balancer of `platform=cpu`: verl's routing rule in a Ray actor that imports no verl.

verl 0.9.1 starts its `GlobalRequestLoadBalancer` as its own Ray actor, whose process imports verl
(via `verl.workers.rollout.router`) only to route requests: ~7 CPU s on a 2-core host, at the
moment the agent-loop worker starts beside it, just before step 1. verl loads a balancer class
named in `actor_rollout_ref.rollout.router_config_path` (a YAML file with `router_class`) instead;
`platform=cpu` names this one (router.yaml, set by `srpo_verl.main_ppo.prepare`). Its process
imports Ray and this module only.

The rule is verl's default one: a request id keeps the server it was first given (sticky, for
multi-turn prefix reuse); a new one goes to a server with the fewest requests in flight, chosen at
random among equals. With one replica (the CPU default) every request goes to that server. Under
`rollout.full_determinism` (hash routing, which verl does not offer a YAML-named balancer) verl's
own balancer is kept.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from typing import Any

# The YAML file `platform=cpu` points rollout.router_config_path at.
CONFIG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "router.yaml")

# Sticky entries kept (least recently used dropped first), as verl's routing cache.
STICKY_CACHE_SIZE = 10000


class LocalLoadBalancer:
    """The methods verl's LLMServerClient calls on a load balancer (acquire/release and the field
    declarations), with verl's sticky + least-in-flight rule."""

    def __init__(self, servers: dict[str, Any], config: dict | None = None):
        self._servers = dict(servers)
        self._inflight = {server_id: 0 for server_id in servers}
        self._sticky: OrderedDict[str, str] = OrderedDict()

    def acquire_server(self, request_id: str) -> tuple[str, Any]:
        server_id = self._sticky.get(request_id)
        if server_id is None or server_id not in self._inflight:
            if not self._inflight:
                raise RuntimeError("No available servers in load balancer")
            fewest = min(self._inflight.values())
            server_id = random.choice([sid for sid, count in self._inflight.items() if count == fewest])
        self._sticky[request_id] = server_id
        self._sticky.move_to_end(request_id)
        while len(self._sticky) > STICKY_CACHE_SIZE:
            self._sticky.popitem(last=False)
        self._inflight[server_id] += 1
        return server_id, self._servers[server_id]

    def release_server(self, server_id: str, request_id: str | None = None) -> None:
        if self._inflight.get(server_id, 0) > 0:
            self._inflight[server_id] -= 1

    def require_acquire_fields(self) -> list[str]:
        return []

    def require_release_fields(self) -> list[str]:
        return []

    def get_status(self) -> dict:
        return {"servers": dict(self._inflight), "total_inflight": sum(self._inflight.values())}

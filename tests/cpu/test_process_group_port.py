"""The CPU backend's process-group init: a MASTER_PORT taken between verl's choice of it (on the
driver) and the worker's bind is retried on a free port when the worker is the only rank."""

import socket

import pytest
import torch

from srpo_verl.cpu import platform


def _init_that_loses_the_port_once(calls):
    def init(timeout_second=None, backend=None):
        calls.append((backend, __import__("os").environ["MASTER_PORT"]))
        if len(calls) == 1:
            raise torch.distributed.DistNetworkError("The server socket has failed to listen ... EADDRINUSE")
        return "initialised"

    return init


def test_a_single_rank_retries_on_a_free_port(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_PORT", "39303")
    monkeypatch.delenv("DIST_INIT_METHOD", raising=False)
    calls = []
    assert platform._gloo(_init_that_loses_the_port_once(calls))() == "initialised"
    assert [backend for backend, _ in calls] == ["gloo", "gloo"]
    assert calls[0][1] == "39303" and calls[1][1] != "39303"
    with socket.socket() as sock:  # the new port was free when chosen
        sock.bind(("127.0.0.1", int(calls[1][1])))


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "1", "DIST_INIT_METHOD": "tcp://h:1"}])
def test_several_ranks_or_an_explicit_rendezvous_keep_the_error(monkeypatch, env):
    monkeypatch.delenv("DIST_INIT_METHOD", raising=False)
    monkeypatch.setenv("MASTER_PORT", "39303")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = []
    with pytest.raises(torch.distributed.DistNetworkError):
        platform._gloo(_init_that_loses_the_port_once(calls))()
    assert len(calls) == 1

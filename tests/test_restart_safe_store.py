"""The process group's store on a restarted single-node torchrun job hides the previous attempt's keys."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist

from datakd.api.distributed import restart_safe_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def agent_store(monkeypatch: pytest.MonkeyPatch) -> dist.TCPStore:
    """A TCPStore standing in for torchrun's agent store, and the environment torchrun gives a worker."""
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, 1, is_master=True)
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "GROUP_WORLD_SIZE": "1",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return server


def test_a_restarted_worker_does_not_see_the_previous_attempts_keys(agent_store: dist.TCPStore) -> None:
    # What gloo's first attempt left behind: a peer address under the process group's key.
    agent_store.set("datakd/attempt_0/default_pg/rank_1", "127.0.0.1:41898")
    store = restart_safe_store()
    assert store is not None
    assert not store.check(["default_pg/rank_1"])  # the stale address is not visible
    store.set("default_pg/rank_1", "127.0.0.1:50000")
    assert agent_store.get("datakd/attempt_1/default_pg/rank_1") == b"127.0.0.1:50000"


@pytest.mark.parametrize(
    "env",
    [
        {"GROUP_WORLD_SIZE": "2"},  # multi-node: restart counts can differ between nodes
        {"TORCHELASTIC_USE_AGENT_STORE": "False"},  # a fresh store per attempt already
    ],
)
def test_torch_store_is_kept_where_a_prefix_would_be_wrong_or_useless(
    agent_store: dist.TCPStore, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert restart_safe_store() is None

"""The few facts the trainer needs about torch.distributed (torchrun sets the environment)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device_kind: str) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, NCCL on CUDA."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    store = restart_safe_store()
    if store is None:
        dist.init_process_group(backend=backend)
    else:
        rank_, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend=backend, store=store, rank=rank_, world_size=size)
    return True


def restart_safe_store() -> dist.Store | None:
    """The process group's store, namespaced by the restart, on a single-node torchrun job; else None.

    torchrun's c10d rendezvous shares its agent's TCPStore with the workers and keeps it across restarts,
    without a per-attempt prefix (pytorch/pytorch#135712). A restarted worker can then read the address
    its peer published in the *previous* attempt, before the new peer overwrites it, and gloo fails with
    "connectFullMesh ... Connection refused" (NCCL with a stale unique id). One agent restarts all of a
    node's workers together, so on one node `TORCHELASTIC_RESTART_COUNT` names the attempt consistently
    and a prefix with it hides the stale keys. Across nodes the counts can differ (a node restarted for a
    membership change keeps its count), so multi-node jobs keep torch's store; launch those with
    `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` (a fresh store per attempt), see docs/reliability.md.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    store, _, _ = next(dist.rendezvous("env://"))
    return dist.PrefixStore(f"datakd/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown() -> None:
    """Leave the process group before the interpreter exits, not during its teardown.

    A restarted torchrun worker once died in std::terminate ("terminate called without an active
    exception", SIGABRT), which torchrun counts as a failed worker; a process group torn down by
    interpreter exit is the likely cause (docs/reliability.md).
    """
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()

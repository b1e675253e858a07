"""Data-parallel training under ``torchrun`` (issue 15 item 4); no qgis import.

``train`` calls :func:`setup` at its start. Without torchrun (WORLD_SIZE unset or 1) it returns None and
training runs as before. Under ``torchrun --nproc_per_node=N ...`` (WORLD_SIZE > 1) it joins the process
group (NCCL on CUDA, gloo on the CPU; one already initialised by the caller is used as it is), and the
training loop then:
- draws every batch's windows from the same seeded generator on every rank (the global batch) and cuts
  only its own contiguous share of the batch's runs (:func:`share`), so the global batch, the bootstrap
  weights and the schedule are those of one process with the same BATCH_SIZE;
- weights each rank's loss by the global batch's denominators and the world size, so that DDP's gradient
  average is the one-process gradient (equal up to float summation order; with DROPOUT > 0 the ranks draw
  their own dropout masks);
- scores validation samples split by location across ranks and gathered, so every rank takes the same
  early-stopping decision; reduces the train loss and the cancel flag;
- writes the model file, the resume checkpoint and the log on rank 0 only.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    backend: str
    owns_group: bool      # initialised here (destroyed by ``close``), or by the caller

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be a number of processes, got {os.environ.get('WORLD_SIZE')!r}") from None


def setup(device: torch.device, log=print, timeout_s: float = 600.0) -> Optional[Dist]:
    """Join the torchrun process group when WORLD_SIZE > 1 (or use the caller's); None otherwise."""
    import torch.distributed as dist
    initialised = dist.is_available() and dist.is_initialized()
    if world_size_from_env() <= 1 and not (initialised and dist.get_world_size() > 1):
        return None
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 (torchrun) but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not initialised:
        for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {key} is not set: start the "
                                   f"training with torchrun (torchrun --nproc_per_node=N -m ismoe_qgis train ...)")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    d = Dist(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), owns)
    if d.is_main:
        log(f"distributed training: {d.world} processes ({d.backend}), rank 0 writes the model, the checkpoint "
            f"and the log")
    return d


def rank_device(device: torch.device, d: Optional[Dist]) -> torch.device:
    """Each rank's device: cuda:LOCAL_RANK on CUDA (one GPU per process), the CPU otherwise."""
    if d is None or device.type != "cuda":
        return device
    return torch.device("cuda", d.local_rank)


def close(d: Optional[Dist]):
    import torch.distributed as dist
    if d is not None and d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(d: Dist, obj) -> list:
    import torch.distributed as dist
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def check_same(d: Dist, what: dict, differences):
    """All ranks must hold the same `what` (a fingerprint dict). differences(a, b) -> list of strings.
    Raises ValueError on every rank naming the first rank that differs from rank 0 and the items."""
    allw = gather_objects(d, what)
    for r in range(1, d.world):
        diff = differences(allw[0], allw[r])
        if diff:
            raise ValueError(f"the torchrun ranks disagree on the dataset or configuration: rank {r} differs from "
                             f"rank 0 in {'; '.join(diff[:6])} (every rank must read the same DATASET with the "
                             f"same parameters)")


def share(d: Optional[Dist], n: int):
    """This rank's contiguous share [a, b) of n items (np.array_split's split)."""
    if d is None:
        return 0, n
    bounds = np.cumsum([0] + [len(s) for s in np.array_split(np.arange(n), d.world)])
    return int(bounds[d.rank]), int(bounds[d.rank + 1])


def any_rank(d: Optional[Dist], flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (cancel: all ranks stop at the same batch)."""
    if d is None:
        return bool(flag)
    import torch.distributed as dist
    t = torch.tensor([1.0 if flag else 0.0], device=device if d.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_ranks(d: Optional[Dist], values, device: torch.device) -> np.ndarray:
    """Element-wise sum over ranks of a few float64 numbers."""
    v = np.asarray(values, np.float64)
    if d is None:
        return v
    import torch.distributed as dist
    t = torch.from_numpy(v.copy()).to(device if d.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def sharded_predict(d: Optional[Dist], predict, t_idx, n_idx):
    """predict(t, n) -> tuple of arrays with one row per sample, run on this rank's samples (split by
    location: a stateful model's runs per location are then those of one process) and gathered into the
    samples' order on every rank."""
    t_idx, n_idx = np.asarray(t_idx, np.int64), np.asarray(n_idx, np.int64)
    if d is None:
        return predict(t_idx, n_idx)
    mine = np.nonzero(n_idx % d.world == d.rank)[0]
    part = predict(t_idx[mine], n_idx[mine])
    parts = gather_objects(d, (mine, part))
    out = []
    for i in range(len(part)):
        first = np.asarray(part[i])
        arr = np.empty((len(t_idx),) + first.shape[1:], first.dtype)
        for idx, p in parts:
            arr[idx] = p[i]
        out.append(arr)
    return tuple(out)


class MembersForward(torch.nn.Module):
    """The stacked model's ``forward_members`` as a forward, so that DistributedDataParallel (which hooks
    ``forward``) wraps the one stacked module of all members, folds and experts."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, doy=None):
        return self.net.forward_members(x, doy)

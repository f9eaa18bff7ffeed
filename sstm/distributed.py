"""Several processes, one artifact: sstm stages under ``torchrun`` / ``accelerate launch``.

The launcher starts one process per device and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`world` reads them ((0, 1)
without a launcher, and then every function here is the single-process identity).
The process group is initialized by the launcher's library (accelerate, for
training) or by :func:`setup` from the same variables: gloo for CPU tensors, plus
NCCL for CUDA tensors when CUDA is present.

The work of a stage is split over the ranks and put back together exactly:

* rows are dealt round-robin, rank k taking items k, k+W, k+2W, ... (:func:`shard`;
  disjoint, and balanced when the items are sorted by length);
* sums (a Fisher's Σ_i vec(G_i) vec(G_i)ᵀ and its row count N) are all-reduced
  (:func:`all_reduce_sum`), so F = (Σ_ranks S_k) / (Σ_ranks N_k) is the
  single-process F up to the order of float additions;
* per-row records are gathered and re-interleaved into the original order (:func:`gather`).

Registration (:func:`get_or_build`): only rank 0 writes to the registry. Every rank
runs the build (the collectives inside it need all of them); rank 0 inside the
registry's temp dir, the others in a scratch dir they delete. Before rank 0's build
returns, and so before anything is registered, all ranks all-reduce a success flag:
a rank that raised or died never contributes it, so rank 0's all-reduce fails (gloo:
"connection closed by peer"; NCCL: the process group timeout) and the registry
discards the build. Rank 0 then sends the id to the others, which read the same artifact.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry

CRASH_RANK = "SSTM_TEST_CRASH_RANK"  # test seam: this rank raises after its build, before the success flag


@dataclass(frozen=True)
class World:
    rank: int  # this process, 0 .. size-1
    size: int  # processes in the job
    local_rank: int  # this process on its machine (its GPU index)

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the job, from the launcher's environment; (0, 1, 0) without a launcher."""
    env = os.environ
    return World(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def setup() -> World:
    """:func:`world`, with the default process group initialized when the job has several processes."""
    w = world()
    if w.size > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(w.local_rank)
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=w.rank, world_size=w.size)
    return w


def shard(items: Sequence) -> list:
    """This rank's items: indices rank, rank + W, rank + 2W, ... (all of them in a single process)."""
    w = world()
    return list(items[w.rank::w.size])


def gather(local: list) -> list:
    """Every rank's :func:`shard` results, back in the order of the items that were sharded (on every rank)."""
    w = setup()
    if w.size == 1:
        return list(local)
    parts: list = [None] * w.size
    torch.distributed.all_gather_object(parts, local)
    out = []
    for i in range(max(len(p) for p in parts)):
        out.extend(p[i] for p in parts if i < len(p))
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over the ranks, in place (t itself in a single process)."""
    if setup().size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def _all_arrived(w: World) -> None:
    """Return only once every rank has finished its build (each adds 1; a rank that failed never adds)."""
    flag = torch.ones(1, dtype=torch.int64)
    try:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.SUM)
    except RuntimeError as e:  # a peer died: gloo closes the connection, NCCL times out
        raise SSTMError(f"rank {w.rank}: another rank failed ({str(e).splitlines()[0][:120]}); "
                        "nothing is registered") from None
    if int(flag) != w.size:
        raise SSTMError(f"rank {w.rank}: {w.size - int(flag)} rank(s) did not finish; nothing is registered")


def _broadcast(obj: Any) -> Any:
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def get_or_build(reg: Registry, kind: str, params: Mapping[str, Any], inputs: Mapping[str, Artifact | str],
                 code: str, build: Callable[[Path], Any], *, label: str = "", seed: int | None = None) -> Artifact:
    """:meth:`Registry.get_or_build` for every rank of a job: rank 0 registers, the others get the same artifact.

    Rank 0 tells the others whether it builds (None) or found the id (the id). When it
    builds, every rank runs `build`, then the success flag, then rank 0 registers and sends
    the id. In a single process this is exactly ``reg.get_or_build``.
    """
    w = setup()
    if w.size == 1:
        return reg.get_or_build(kind, params, inputs, code, build, label=label, seed=seed)

    def run(out: Path):
        result = build(out)
        if os.environ.get(CRASH_RANK) == str(w.rank):
            raise RuntimeError(f"rank {w.rank}: crash injected by {CRASH_RANK}")
        _all_arrived(w)
        return result

    if w.main:
        def announce_and_run(out: Path):
            _broadcast(None)  # "building": the others build too
            return run(out)

        art = reg.get_or_build(kind, params, inputs, code, announce_and_run, label=label, seed=seed)
        _broadcast(art.id)  # a cache hit (the others stop here) or the id just registered
        return art
    aid = _broadcast(None)
    if aid is None:
        with tempfile.TemporaryDirectory(prefix=f"sstm-rank{w.rank}-") as scratch:
            run(Path(scratch))
        aid = _broadcast(None)
    return reg.get(aid, kind=kind)


__all__ = ["CRASH_RANK", "World", "all_reduce_sum", "gather", "get_or_build", "setup", "shard", "world"]

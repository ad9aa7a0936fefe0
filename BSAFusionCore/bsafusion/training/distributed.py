"""Training on several processes started by ``torchrun``: this process's place, the process
group, and what a lost rank looks like.

``torchrun`` starts one process per GPU (or per share of the CPU cores) and tells each its
place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`process_group` joins them (``nccl`` on CUDA, ``gloo`` on CPU) and
:meth:`World.current` describes the joined group to the trainer.

Every collective carries a timeout, so no rank waits for ever: a rank that dies closes its
connections and the survivors' next collective fails at once (gloo) or after the timeout (a
hung rank; NCCL's watchdog on GPU). Such failures come out of the group as :class:`RankLost`,
which the command line prints as one line; checkpoints are atomic, so the last one on disk
is whole and the run resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from bsafusion.errors import InputError

#: Seconds a rank waits in a collective. The other ranks wait while rank 0 validates and
#: writes checkpoints, so it must exceed the validation time.
DEFAULT_TIMEOUT_S = 600.0


class RankLost(RuntimeError):
    """Another rank stopped answering (died, was killed, or hung past the timeout)."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process, ungrouped, by default)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    grouped: bool = False

    @classmethod
    def current(cls) -> "World":
        """The joined process group, or a single ungrouped process when none was joined."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank = dist.get_rank()
        return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)), grouped=True)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone validates, writes checkpoints and logs, and shows progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The GPU of this rank on its node when training on CUDA (``cuda`` -> ``cuda:LOCAL_RANK``)."""
        if not self.grouped or device.type != "cuda":
            return device
        local = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(local)
        return local

    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items split evenly over the ranks."""
        if count % self.size:
            raise InputError(f"train.batch_size={count} must be a multiple of the number of processes ({self.size})")
        share = count // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks (``values`` itself in a single process)."""
        if self.grouped:
            values = values.clone()
            with lost_rank_errors():
                dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if self.grouped:
            with lost_rank_errors():
                dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether the environment places this process in a group (``torchrun`` sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ


@contextlib.contextmanager
def lost_rank_errors() -> Iterator[None]:
    """Turn the failure of a collective (a peer closed its connection, or the timeout passed) into :class:`RankLost`."""
    try:
        yield
    except RankLost:
        raise
    except (dist.DistError, RuntimeError) as exc:
        if not _is_collective_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankLost(f"rank {dist.get_rank()}: another training process stopped answering ({first[:200]})") from exc


#: What gloo's plain ``RuntimeError`` says when a peer is gone: "Connection closed by peer",
#: "Timed out waiting ...ms for recv operation", "Application timeout caused pair closure".
_GLOO_LOST_PEER = re.compile(r"connection (closed|reset)|timed out|timeout|pair closure", re.IGNORECASE)


def _is_collective_failure(exc: BaseException) -> bool:
    """NCCL and the rendezvous store raise ``DistError``; gloo a ``RuntimeError`` (:data:`_GLOO_LOST_PEER`)."""
    return isinstance(exc, dist.DistError) or bool(_GLOO_LOST_PEER.search(str(exc)))


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """Join the group ``torchrun`` described in the environment and leave it on any exit.

    The backend follows the device: ``nccl`` for CUDA, ``gloo`` for CPU. Leaving on every
    exit (an error, Ctrl-C, SIGTERM from ``torchrun`` when another rank failed) releases the
    connections so that no rank is left waiting beyond the timeout.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    with lost_rank_errors():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield World.current()
    finally:
        dist.destroy_process_group()


__all__ = ["DEFAULT_TIMEOUT_S", "RankLost", "World", "launched_by_torchrun", "lost_rank_errors", "process_group"]

"""Where loracle knows about ranks: the processes of an ``accelerate launch`` / ``torchrun`` job.

Every process of a launched job runs the same code. :class:`Ranks` says which one this is and gives the few
collective steps the active-learning loop and the ``train`` / ``evaluate`` commands need:

- ``writer(fn)``: ``fn`` runs on rank 0 alone (every file, SQLite row, checkpoint, report and lock is written
  there) once all ranks have arrived; the others wait for it to end, and an error on rank 0 is raised on every
  rank (as :class:`WriterFailed`).
- ``broadcast(obj)``: rank 0's value on every rank (the strategy's selection).
- ``map(fn, items)``: ``fn`` on this rank's contiguous shard of ``items``, the results concatenated in item order
  on every rank. Only for deterministic ``fn`` (a stochastic pass seeded per call would draw other numbers on a
  shard than on the whole); the loop shards its MC scoring by whole persisted chunks instead (``spread``).
- ``spread(keys)``: the keys this rank handles when they are dealt round-robin, one per rank per wave.

A process that was not launched is rank 0 of 1 and every method is the plain single-process call (no
``torch.distributed``, no accelerate state is created). Rank and world size come from accelerate's
``PartialState``, which reads what ``accelerate launch`` and ``torchrun`` set (gloo on CPUs, nccl on GPUs);
objects travel with accelerate's ``broadcast_object_list`` / ``gather_object`` (``torch.distributed`` pickling).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from loracle.errors import LoracleError

T = TypeVar("T")


class WriterFailed(LoracleError):
    """Raised on ranks other than 0 when rank 0 failed in a :meth:`Ranks.writer` step (rank 0 raises the
    original error and prints it; the others only exit)."""


def launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch`` / ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


LEAVE_WAIT_SECONDS = 60


def leave() -> None:
    """Leave the process group, where this process joined one. :meth:`Ranks.current` registers it to run at
    interpreter exit, so that no gloo or nccl thread outlives the interpreter (which aborts the process after its
    work is done: "terminate called without an active exception"). Under gloo the ranks first wait for each other
    (a monitored barrier of at most ``LEAVE_WAIT_SECONDS``, passed over where a rank has gone), so that none tears
    its connections down while another still uses them: without it, `al predict` under torchrun still aborted at
    exit about once in a dozen runs of its test on a loaded machine."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_backend() == "gloo" and torch.distributed.get_world_size() > 1:
        from datetime import timedelta

        try:
            torch.distributed.monitored_barrier(timeout=timedelta(seconds=LEAVE_WAIT_SECONDS))
        except RuntimeError:  # a rank left first (it failed, or exited without leaving): leave all the same
            pass
    torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job.

    Args:
        rank: 0 .. ``world - 1``; rank 0 is the writer.
        world: number of processes.
        device: the device accelerate assigned to this process (None for a process that was not launched: the
            model stays where it is).
    """

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @classmethod
    def current(cls) -> "Ranks":
        """The ranks of this process (a single process when not launched; then nothing distributed is set up).

        Under a launcher, accelerate's ``PartialState`` joins the process group (gloo when no GPU is present, so
        ``torchrun`` on CPUs works without ``ACCELERATE_USE_CPU``); the ``Accelerator`` of
        :func:`loracle.training.train` then shares that state.
        """
        if not launched():
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        atexit.unregister(leave)  # once, however often this is called
        atexit.register(leave)
        return cls(rank=state.process_index, world=state.num_processes, device=state.device)

    @property
    def is_writer(self) -> bool:
        """Rank 0: the one process that writes the run's state and files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Every rank waits here until all have arrived."""
        if self.distributed:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.distributed:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def writer(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 alone; the other ranks wait for it and return None.

        Every rank reads the state only between two ``writer`` steps: ``fn`` starts once every rank has arrived
        (so no rank is still reading what it changes) and every rank leaves after it ended (so all read what it
        wrote). The reads that steer the loop therefore agree on every rank.

        Raises:
            WriterFailed: on the other ranks, when ``fn`` raised on rank 0 (which raises its own error).
        """
        if not self.distributed:
            return fn()
        self.barrier()
        result, failure = None, None
        if self.is_writer:
            try:
                result = fn()
            except BaseException as err:
                self.broadcast(f"{type(err).__name__}: {err}")
                raise
        failure = self.broadcast(None)  # rank 0 sends None: it succeeded
        if failure is not None:
            raise WriterFailed(f"rank 0 failed: {failure}")
        return result

    def shard(self, n: int) -> range:
        """This rank's contiguous part of ``range(n)`` (sizes differ by at most one; earlier ranks get more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def map(self, fn: Callable[[list[Any]], torch.Tensor], items: Sequence[Any]) -> torch.Tensor:
        """``fn(items)`` computed shard by shard: ``fn`` sees this rank's contiguous shard, the ``[n_i, ...]``
        results are concatenated in item order on every rank. ``fn`` must be deterministic (see the module
        docstring) and return a tensor on any device; the gather moves it to the CPU once.
        """
        if not self.distributed:
            return fn(list(items))
        part = self.shard(len(items))
        mine = fn([items[i] for i in part]).cpu() if len(part) else None
        parts = [p for p in self.gather(mine) if p is not None]
        return torch.cat(parts) if parts else fn([])

    def spread(self, keys: Sequence[T]) -> list[list[T | None]]:
        """``keys`` dealt round-robin: one list per wave, holding the key of each rank (None where the last wave
        is short). Rank ``r`` handles ``wave[r]``."""
        waves = [list(keys[i:i + self.world]) for i in range(0, len(keys), self.world)]
        return [w + [None] * (self.world - len(w)) for w in waves]

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to this rank's device (a launched process); a single process leaves it where it is."""
        if self.device is not None:
            model.to(self.device)
        return model

"""One training over several processes: torch.distributed, started by `--nproc N` or `torchrun`.

What each rank does (dpmammo.train.loop, dpmammo.privacy.engine):
- every rank holds the same model (rank 0's parameters are broadcast at the start) and the same
  sampler state; rank 0's secret key is broadcast over the process group (never written to a disk;
  across machines it travels the training's network in the clear, as the un-noised clipped sums
  of the other ranks do already: that network must be as private as the data), so every rank
  draws the same Poisson sample of units and processes its share of it: the units numbered
  u ≡ rank (mod N). Each unit is therefore sampled once per step at the recorded rate and clipped
  whole on one rank, and the sampling equals the 1-process run's draw for draw;
- the clipped sums are all-reduced and the Gaussian noise is added once, by rank 0, from the
  secret key (Opacus's distributed optimizers: `DistributedDPOptimizer`);
- only rank 0 writes: the run directory, its log, checkpoints, the feature cache. A resume reads
  rank 0's checkpoint on every rank.

Two ways to start: `launch` (what `dpmammo train --nproc N` calls) spawns N processes on this
machine and joins them: a rank that fails or is killed stops the others and fails the run with one
line, and rerunning resumes from rank 0's last checkpoint. Under `torchrun` (several machines),
`init_from_env` joins the process group torchrun describes in the environment, and torchrun's agent
stops the other ranks when one fails.

Backend: gloo on CPU, NCCL on CUDA (one GPU per process, `cuda:LOCAL_RANK`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch

from dpmammo.errors import DpMammoError
from dpmammo.privacy.secret import KEY_BYTES, SecretKey


@dataclass(frozen=True)
class Ranks:
    """This process's place in a training: rank `rank` of `world` (1: a plain one-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (cuda:LOCAL_RANK) when the run uses CUDA."""
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    def _tensor_device(self) -> torch.device:
        # NCCL moves CUDA tensors only; gloo CPU ones.
        return torch.device("cuda", self.local_rank) if _backend_is_nccl() else torch.device("cpu")

    def share_key(self, key: SecretKey | None) -> SecretKey:
        """Rank 0's key on every rank, over the process group (never written to a disk; see the module
        docstring for the network it crosses). Rank 0 passes its key, the others None."""
        if not self.distributed:
            assert key is not None
            return key
        buf = torch.zeros(KEY_BYTES + 1, dtype=torch.uint8, device=self._tensor_device())
        if self.is_main:
            buf[:KEY_BYTES] = torch.frombuffer(bytearray(key.bytes_for_other_ranks()), dtype=torch.uint8)
            buf[KEY_BYTES] = int(key.seeded)
        torch.distributed.broadcast(buf, src=0)
        if self.is_main:
            return key
        return SecretKey(bytes(buf[:KEY_BYTES].cpu().tolist()), seeded=bool(buf[KEY_BYTES].item()))

    def share_flag(self, value: bool | None) -> bool:
        """Rank 0's boolean (e.g. "resuming") on every rank."""
        if not self.distributed:
            return bool(value)
        buf = torch.tensor([int(bool(value)) if self.is_main else 0], device=self._tensor_device())
        torch.distributed.broadcast(buf, src=0)
        return bool(buf.item())

    def share_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor (same shape and dtype on every rank) on every rank."""
        if not self.distributed:
            return t
        buf = t.to(self._tensor_device()).contiguous()
        torch.distributed.broadcast(buf, src=0)
        return buf.to(t.device)

    def share_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (what Opacus's DPDDP does at construction;
        done here without the wrapper, which would rename the state-dict keys)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(t.data, src=0)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of a non-private step; a rank whose share of the batch was
        empty contributes zeros."""
        if not self.distributed:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)

    def mean(self, total: float, count: int) -> float:
        """sum(total) / sum(count) over the ranks (a logged non-private number, e.g. the loss)."""
        if self.distributed:
            buf = torch.tensor([total, count], dtype=torch.float64, device=self._tensor_device())
            torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
            total, count = buf.tolist()
        return total / max(1, count)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


SINGLE = Ranks()
# How long a rank waits in a collective. Long on purpose: the other ranks wait while rank 0 alone
# computes a feature cache or validates a large model. A rank that dies is not waited for: the
# launcher (or torchrun's agent) sees its exit and stops the others.
COLLECTIVE_TIMEOUT = timedelta(hours=12)


def _backend_is_nccl() -> bool:
    return torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl"


def current() -> Ranks:
    """The process group this process belongs to (SINGLE when none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    rank = torch.distributed.get_rank()
    return Ranks(rank=rank, world=torch.distributed.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def backend_for(device: str) -> str:
    """gloo for CPU training, NCCL when the run will use CUDA."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def init_from_env(device: str) -> Ranks:
    """Under torchrun (WORLD_SIZE > 1 in the environment): join its process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return current()
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend, init_method="env://", timeout=COLLECTIVE_TIMEOUT)
    return current()


@contextmanager
def torchrun_group(device: str) -> Iterator[Ranks]:
    """`init_from_env` for one command: under torchrun, the ranks leave the process group together
    when the block ends (a barrier, then destroy_process_group), and at once when it raises. A rank
    that exits with the group still open can abort in the backend's threads at interpreter exit."""
    joins = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized()
    ranks = init_from_env(device)
    try:
        yield ranks
        if joins:
            ranks.barrier()
    finally:
        if joins and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, backend: str, threads: int, errors, fn: Callable[..., Any],
               args: tuple) -> None:
    """The body of one spawned rank: join the group, run fn(*args), leave the group. A DpMammoError
    (a refusal, a data problem) reaches the parent as its one line; anything else as a traceback."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world, timeout=COLLECTIVE_TIMEOUT)
        fn(*args)
    except DpMammoError as e:
        errors.put((rank, str(e)))
        sys.exit(1)
    except BaseException as e:  # noqa: BLE001 — reported to the parent, which fails the run
        errors.put((rank, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        sys.exit(1)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch(fn: Callable[..., Any], args: tuple, nproc: int, device: str) -> None:
    """Run fn(*args) in `nproc` new processes, one rank each, and wait for all of them.

    A rank that raises, exits or is killed fails the launch: torch.multiprocessing stops the other
    ranks, and the first error (or how the process ended) is raised as one DpMammoError line.
    """
    import torch.multiprocessing as mp

    backend = backend_for(device)
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise DpMammoError(f"--nproc {nproc} on CUDA needs {nproc} GPUs, {torch.cuda.device_count()} visible; "
                           "lower --nproc or train on device: cpu")
    # torch logs a warning for each rank it stops after another failed; the run's error says it once.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    errors = mp.get_context("spawn").SimpleQueue()
    threads = max(1, torch.get_num_threads() // nproc)  # the caller's CPU budget, shared by the ranks
    try:
        mp.start_processes(_rank_main, args=(nproc, _free_port(), backend, threads, errors, fn, args), nprocs=nproc,
                           join=True, start_method="spawn")
    except mp.ProcessExitedException as e:
        first = None if errors.empty() else errors.get()
        if first is not None and "\n" not in first[1]:  # a DpMammoError of a rank: its own line
            raise DpMammoError(first[1]) from None
        why = (f"process {first[0]} raised {first[1].splitlines()[0]}" if first is not None else
               f"process {e.error_index} " + (f"was killed by signal {e.signal_name}" if e.signal_name
                                              else f"exited with code {e.exit_code}"))
        if first is not None:
            sys.stderr.write(first[1])
        raise DpMammoError(f"training over {nproc} processes failed: {why}; the other processes were stopped. "
                           "Rerun the same command to resume from the last checkpoint") from None

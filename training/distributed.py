"""Data-parallel training on torch.distributed: the process group from torchrun's environment, each
rank's share of every batch and its own noise stream, and the few collectives the loop needs.

    torchrun --standalone --nproc_per_node=2 -m vae_export train --preset mlp --out runs/ddp
    vae-export train --nproc 2 --preset mlp --out runs/ddp          # the same, torchrun started for you

`--batch-size` stays the *global* batch: every rank draws the same seeded permutation of the whole
dataset (a new one each epoch), cuts it into global batches, and computes its own slice of each. So N
processes take the same optimizer steps as one process with that batch (no learning-rate rescaling),
and a checkpoint holds one global sampler state that any number of ranks can resume.

The loss: each rank sums the ELBO over its slice and multiplies it by the world size before backward.
DDP averages gradients over ranks, (1/N) * sum_r N * grad(sum_{i in r} loss_i) = grad(sum_i loss_i),
the single-process gradient of the summed global batch, exactly, even when the slices differ in size.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vae_export import files
from vae_export.errors import UsageError
from vae_export.training import launch

# Longer than anything rank 0 does alone (evaluation, figures, checkpoint) while the others wait in a
# collective; after it a rank whose peer vanished raises instead of hanging forever.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; one process when they are absent."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def setup(dev: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun described (NCCL on CUDA, Gloo on CPU); with one process, nothing.
    Returns the world and this rank's device: on CUDA, GPU LOCAL_RANK of its machine."""
    world = World.from_env()
    if world.size == 1:
        return world, dev
    launch.die_with_parent()          # a rank never outlives the agent that started it
    exit_when_stuck(launch.grace() / 2)
    if dev.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UsageError(f"process {world.local_rank} of this machine has no GPU: torch sees "
                             f"{torch.cuda.device_count()}; start at most that many processes per machine")
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=dev if dev.type == "cuda" else None)
    return world, dev


def exit_when_stuck(grace: float) -> None:
    """Make this rank end on SIGTERM/SIGINT within `grace` seconds, even while its main thread waits in
    C++ (rendezvous, a collective whose peer is gone or stopped), where Python's handler never runs.
    Python's C-level handler writes the signal to the wakeup fd at once; a thread waiting on it gives
    the main thread `grace` to unwind as usual, then removes this process's temp and lock files and
    exits 128 + the signal. Call from the main thread, with the command's handlers installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write)

    def watch() -> None:
        while (sig := os.read(read, 1)[0]) not in (signal.SIGTERM, signal.SIGINT):
            pass
        time.sleep(grace)
        files.remove_in_flight()
        if not os.environ.get(launch.ERRORS_ENV):   # under `train --nproc` the CLI says it, once
            os.write(2, b"terminated\n" if sig == signal.SIGTERM else b"interrupted\n")
        os._exit(128 + sig)

    threading.Thread(target=watch, name="exit-when-stuck", daemon=True).start()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The module to train: DDP around `model` when there are several ranks (it all-reduces gradients
    during backward). Checkpoints keep saving `model` itself, so any rank count can load them."""
    return DistributedDataParallel(model) if world.size > 1 else model


def rank_slice(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch of indices (near-equal parts; a short last batch may leave
    a rank an empty part, which contributes a zero gradient)."""
    return batch.tensor_split(world.size)[world.rank]


def loss_for_backward(loss_sum: torch.Tensor, world: World) -> torch.Tensor:
    """The rank's summed loss times the world size: DDP's gradient average then equals the gradient
    of the loss summed over the global batch (see the module docstring)."""
    return loss_sum * world.size


def epoch_noise(noise_rng: torch.Generator, world: World) -> torch.Generator:
    """This rank's reparameterization noise for one epoch. The shared (checkpointed) generator draws one
    seed per epoch, the same on every rank; rank r's stream starts at that seed + r, so ranks never
    share noise and a resume with any rank count continues from the same global state."""
    seed = int(torch.randint(2**62, (), generator=noise_rng, device=noise_rng.device))
    return torch.Generator(device=noise_rng.device).manual_seed(seed + world.rank)


def sum_over_ranks(*values: torch.Tensor) -> list[torch.Tensor]:
    """Element-wise sums over all ranks (a running loss and its image count), for identical decisions."""
    if not dist.is_initialized():
        return list(values)
    stacked = torch.stack([v.double() for v in values])
    dist.all_reduce(stacked)
    return list(stacked.unbind())


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (its evaluation metrics), so that all ranks decide alike."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def describe(world: World, batch_size: int, lr: float) -> dict[str, Any]:
    """What the log and the checkpoint state about the parallel run."""
    return {"world_size": world.size, "effective_batch_size": batch_size,
            "batch_per_rank": -(-batch_size // world.size), "lr": lr,
            "backend": dist.get_backend() if dist.is_initialized() else None}


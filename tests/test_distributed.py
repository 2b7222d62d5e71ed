"""Distributed training (torchrun, Gloo on CPU) and sharded sampling, on real processes and a slice of MNIST."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_export.training import distributed
from vae_export.training.data import batches, load_images, to_float
from vae_export.training.train import Run, TrainSettings, train, train_epoch
from vae_export.checkpoint import load_checkpoint
from vae_export.config import make_config
from vae_export.model import elbo_terms

DECODER = Path(__file__).resolve().parents[1] / "artifacts" / "mlp" / "decoder.onnx"
TRAIN = ["-m", "vae_export", "train", "--device", "cpu", "--limit", "600", "--batch-size", "100", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_pids(marker: str) -> list[int]:
    """Processes started by this test (they inherit its marker in their environment), workers included:
    torchrun starts those in sessions of their own, beyond the reach of a process-group kill."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"VAE_EXPORT_TEST_RUN={marker}".encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@contextmanager
def processes(*commands: tuple[list[str], Path]):
    """Start each (argv, cwd); yields (processes, marker). On the way out, kill whatever of them (and
    of their children) is left, also when the test failed."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "VAE_EXPORT_TEST_RUN": marker, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for argv, cwd in commands]
    try:
        yield procs, marker
    finally:
        for pid in marked_pids(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait()


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    return outputs


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_machines_train_as_one_and_rank0_alone_writes_then_one_process_resumes(mnist_root, tmp_path):
    """Two torchrun agents meet as two machines would (the README's commands, on localhost), each in
    its own folder with a relative --out: only rank 0's folder gets files. Then one process resumes."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    port = free_port()
    args = [*TRAIN, "--epochs", "2", "--data-dir", str(mnist_root), "--out", "run"]
    for node in nodes:
        node.mkdir()
    with processes(*[([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                       f"--node-rank={k}", "--master-addr=127.0.0.1", f"--master-port={port}", *args], node)
                     for k, node in enumerate(nodes)]) as (procs, _):
        outputs = finish(procs)

    assert list((nodes[1] / "run").iterdir()) == [], "a rank other than 0 wrote files"
    assert "checkpoint.pt: epoch 2" in outputs[0] and "checkpoint.pt" not in outputs[1]   # rank 0 alone reports
    run = nodes[0] / "run"
    first, second = metrics(run)
    assert second["train_loss"] < first["train_loss"] and second["test_loss"] < first["test_loss"]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["parallel"] == {"world_size": 2, "effective_batch_size": 100, "batch_per_rank": 50,
                                 "lr": 1e-3, "backend": "gloo"}

    resumed = train(None, TrainSettings(epochs=3), run, data_dir=mnist_root, device="cpu", resume=True)
    assert [m["world_size"] for m in resumed] == [2, 2, 1]
    assert resumed[2]["test_loss"] < resumed[0]["test_loss"]
    assert load_checkpoint(run / "checkpoint.pt")["parallel"]["world_size"] == 1


def test_two_processes_resume_one_then_a_killed_rank_ends_the_run(mnist_root, tmp_path):
    """`train --nproc 2` continues a 1-process checkpoint; SIGKILL of one rank later ends the whole run
    (torchrun tears the group down: no rank hangs) and leaves the last good checkpoint readable."""
    run = tmp_path / "run"
    train(make_config("mlp"), TrainSettings(epochs=1, limit=600, batch_size=100), run, data_dir=mnist_root, device="cpu")
    # --resume takes the batch size and limit from the checkpoint (and refuses them as options)
    args = ["-m", "vae_export", "train", "--device", "cpu", "-q", "--epochs", "1000", "--data-dir", str(mnist_root),
            "--out", str(run), "--resume", "--nproc", "2"]
    with processes(([sys.executable, *args], tmp_path)) as ((proc,), marker):
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):  # two epochs on 2 ranks
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)[0]
            time.sleep(0.2)
        rank1 = [pid for pid in marked_pids(marker) if b"\0RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
        os.kill(rank1[0], signal.SIGKILL)
        output = proc.communicate(timeout=60)[0]
    # one line, naming the rank and the checkpoint that exists (not torchrun's 50-line report, nor every rank's error)
    assert proc.returncode == 1 and output.strip().splitlines() == [
        f"error: a process of the run failed: process 1 was killed by SIGKILL; the last good checkpoint, "
        f"{run / 'checkpoint.pt'}, is kept"], output
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] >= 3 and state["parallel"]["world_size"] == 2
    assert [m["world_size"] for m in state["metrics"][:3]] == [1, 2, 2]


# --- the first step's gradient: 2 ranks (torch.multiprocessing, Gloo) against the single-process sum ---

SETTINGS = TrainSettings(epochs=1, batch_size=64, seed=3)


def _images(root: Path) -> torch.Tensor:
    return to_float(load_images("mnist", root, train=True)[: SETTINGS.batch_size])   # one global batch


def _first_step_gradient(rank: int, port: int, root: Path, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    world, dev = distributed.setup(torch.device("cpu"))
    try:
        run = Run.start(make_config("mlp", likelihood="bernoulli"), SETTINGS, dev)
        train_epoch(run, 1, _images(root), None, distributed.wrap(run.model, world), world)
        if world.is_main:
            torch.save({name: p.grad for name, p in run.model.named_parameters()}, out)
    finally:
        distributed.teardown()


def test_first_step_gradient_of_two_ranks_equals_the_single_process_gradient(mnist_root, tmp_path):
    """Each rank sums the ELBO of its half and scales it by the world size; DDP's average of the two
    gradients must then be the gradient of the ELBO summed over the whole global batch."""
    torch.multiprocessing.spawn(_first_step_gradient, args=(free_port(), mnist_root, tmp_path / "g.pt"), nprocs=2)
    ddp = torch.load(tmp_path / "g.pt", weights_only=True)

    run = Run.start(make_config("mlp", likelihood="bernoulli"), SETTINGS, torch.device("cpu"))
    x_all = _images(mnist_root)
    (idx,) = batches(len(x_all), SETTINGS.batch_size, run.shuffle_rng)
    state = run.noise_rng.get_state()
    loss = 0
    for rank in range(2):
        world = distributed.World(rank=rank, size=2)
        run.noise_rng.set_state(state)                      # every rank draws the epoch seed from one state
        x = x_all[distributed.rank_slice(idx, world)]
        logits, mu, logvar = run.model(x, distributed.epoch_noise(run.noise_rng, world))
        recon, kl = elbo_terms(logits, x, mu, logvar, "bernoulli")
        loss = loss + recon + kl
    loss.backward()
    for name, p in run.model.named_parameters():
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-4, atol=1e-3, msg=name)
    assert max(p.grad.abs().max().item() for p in run.model.parameters()) > 1   # a gradient worth comparing


# --- sharded sampling ---

@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_shards_merged_are_byte_identical_to_one_unsharded_run(tmp_path, dtype):
    from typer.testing import CliRunner

    from vae_export.cli import app

    if not DECODER.is_file():
        pytest.skip(f"no shipped decoder at {DECODER}")
    runner = CliRunner()
    common = ["sample", "--model", str(DECODER), "-n", "9000", "--seed", "5", "--dtype", dtype, "-q"]
    whole = tmp_path / "whole.npy"
    assert runner.invoke(app, [*common, "--batch-size", "4096", "--out", str(whole)]).exit_code == 0
    parts = [tmp_path / f"part-{k}.npy" for k in range(3)]
    for k, part in enumerate(parts):  # shard edges fall inside batches and inside latent chunks
        result = runner.invoke(app, [*common, "--batch-size", "1000", "--shard", f"{k}/3", "--out", str(part)])
        assert result.exit_code == 0, result.output
    merged = tmp_path / "all.npy"
    result = runner.invoke(app, ["merge", *map(str, parts), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert merged.read_bytes() == whole.read_bytes()
    assert np.load(merged).dtype == np.dtype(dtype)


def test_merge_refuses_parts_of_different_runs_and_truncated_parts(tmp_path):
    from vae_export.errors import UsageError, VaeExportError
    from vae_export.shards import merge, parse_shard, shard_range

    a, b, out = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "out.npy"
    np.save(a, np.zeros((3, 1, 28, 28), np.float32))
    np.save(b, np.zeros((3, 1, 28, 28), np.uint8))
    with pytest.raises(VaeExportError, match="not written by `vae-export sample`"):  # tests/test_provenance.py: the rest
        merge([a, b], out)
    np.save(b, np.zeros((3, 1, 28, 28), np.float32))
    b.write_bytes(b.read_bytes()[:-1])
    with pytest.raises(VaeExportError, match="truncated"):
        merge([a, b], out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["a.npy", "b.npy"]
    with pytest.raises(UsageError, match="given twice"):
        merge([a, a], out)
    with pytest.raises(UsageError):
        parse_shard("3/3")
    assert [len(shard_range(10, k, 3)) for k in range(3)] == [3, 3, 4]

"""Class 2 of issue 17: a signal stops everything the command started. Real processes, real signals:
`kill -TERM` to `vae-export train --nproc 2` mid-run, with one rank stopped (so the other waits in a
collective, where Python's signal handler never runs), then a look at /proc for anything left."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from vae_export.checkpoint import load_checkpoint

EXE = Path(sys.executable).parent / "vae-export"


def marked_pids(marker: str) -> list[int]:
    """Live processes that carry this test's marker in their environment (the whole tree inherits it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and f"VAE_EXPORT_TEST_RUN={marker}".encode() in (proc / "environ").read_bytes()
                    and (proc / "stat").read_text().rpartition(")")[2].split()[0] != "Z"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_sigterm_to_train_nproc_stops_every_rank_and_leaves_no_file(mnist_root, tmp_path):
    run, marker = tmp_path / "run", uuid.uuid4().hex
    env = {**os.environ, "VAE_EXPORT_TEST_RUN": marker, "OMP_NUM_THREADS": "1", "VAE_EXPORT_STOP_GRACE": "4"}
    argv = [str(EXE), "train", "--nproc", "2", "--device", "cpu", "--limit", "600", "--batch-size", "100",
            "--epochs", "1000", "--data-dir", str(mnist_root), "--out", str(run), "-q"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)
            time.sleep(0.2)
        ranks = {int(dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                          if "=" in v).get("RANK", -1)): pid for pid in marked_pids(marker)}
        os.kill(ranks[1], signal.SIGSTOP)          # rank 1 cannot react; rank 0 now waits for it in a collective
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
        left = marked_pids(marker)
    finally:
        for pid in marked_pids(marker):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert left == [], f"processes of the run outlived it: {left}"
    assert stderr.strip().splitlines() == ["terminated"], stderr
    assert seconds < 4 + 20, seconds                # the grace period, not torchrun's 30 s or the 10-minute timeout
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".vae-export-files.json"]  # no lock, no temp
    state = load_checkpoint(run / "checkpoint.pt")  # the last good checkpoint, whole
    assert state["epoch"] == len(state["metrics"]) >= 1
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, state["epoch"] + 1))


STUCK_RANK = """
import torch
from vae_export.cli.common import _sigterm_raises   # the handler every command runs under
from vae_export.training import distributed
with _sigterm_raises():
    distributed.setup(torch.device("cpu"))           # rank 0 of 2: waits in rendezvous for a peer that never comes
"""


def test_a_rank_stuck_in_rendezvous_ends_on_sigterm(tmp_path):
    """Python's handler never runs while the main thread waits in C++ (torch's 10-minute rendezvous
    timeout); the rank must still end on SIGTERM, within half the grace period."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "VAE_EXPORT_STOP_GRACE": "2"}
    proc = subprocess.Popen([sys.executable, "-c", STUCK_RANK], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):                    # rank 0 hosts the store: it is in rendezvous now
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)
            time.sleep(0.2)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143 and stderr.strip().splitlines()[-1] == "terminated", stderr
    assert time.monotonic() - t0 < 1 + 10, "the rank waited for the rendezvous timeout"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

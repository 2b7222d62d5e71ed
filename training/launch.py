"""`train --nproc N`: torchrun's process tree, stopped whole by a signal and reported in one line.

    vae-export train --nproc 2 --out runs/ddp        # the CLI calls run_parallel(2, ["train", ...])

The tree: the CLI -> this module's launcher (torchrun's agent, in a session of its own) -> N ranks
(torchrun starts each in a session of its own too). STYLE.md section 8, after torchrun's own forwarding:
- The CLI forwards SIGTERM/SIGINT to the launcher's group; the agent forwards it to every rank.
- A rank blocked in rendezvous or a collective (C++ that never returns to Python, where a signal
  handler would run) still ends: distributed.exit_when_stuck gives it a grace period, then removes the
  files it had in flight (files.in_flight) and exits.
- The CLI waits for every process of the tree; whatever is left after the grace period (a stopped
  rank, say) is killed; the CLI is a child subreaper, so a rank orphaned by a dead agent is still its
  to find and kill. Only then does it exit 143 (130 for SIGINT).
- Each process dies with its parent (PR_SET_PDEATHSIG): a `kill -9` of the CLI takes the tree along.
- A rank that fails writes its one error line into a folder the CLI made (VAE_EXPORT_RANK_ERRORS; see
  cli/common.py), the launcher reduces torchrun's report to the first failure's line, and the CLI
  prints that line alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vae_export.errors import Terminated

ERRORS_ENV = "VAE_EXPORT_RANK_ERRORS"     # the folder each rank writes its error line into
GRACE_ENV = "VAE_EXPORT_STOP_GRACE"       # seconds a stopped tree gets before SIGKILL (default below)
GRACE = 20.0                              # within Kubernetes' default terminationGracePeriodSeconds (30)
REPORT = "report"                         # the launcher's one line, in the ERRORS_ENV folder
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def grace() -> float:
    with contextlib.suppress(ValueError):
        return max(0.0, float(os.environ.get(GRACE_ENV, GRACE)))
    return GRACE


def _prctl(option: int, value: int) -> None:
    """Linux only; elsewhere the tree is still signalled and waited for, only orphans may escape."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def die_with_parent() -> None:
    """SIGTERM this process when the one that started it dies (also by SIGKILL)."""
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:     # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def run_parallel(nproc: int, args: list[str]) -> tuple[int, str | None]:
    """`python -m vae_export ARGS` in `nproc` ranks under torchrun; (exit code, the failure's one line).
    A SIGTERM/SIGINT (as cli/common.py raises them) stops the whole tree before it propagates."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    with tempfile.TemporaryDirectory(prefix="vae-export-ranks-") as errors:
        launcher = subprocess.Popen([sys.executable, "-m", "vae_export.training.launch", str(nproc), *args],
                                    env={**os.environ, ERRORS_ENV: errors}, start_new_session=True)
        try:
            code = launcher.wait()
        except KeyboardInterrupt as e:
            _stop(launcher, signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
            raise
        finally:
            _stop(launcher, None)
        report = Path(errors) / REPORT
        return code, (report.read_text().strip() or None) if report.exists() else None


def _stop(launcher: subprocess.Popen, sig: signal.Signals | None) -> None:
    """Signal the launcher's group (with sig), wait for every descendant of ours for the grace period,
    SIGKILL what is left and reap it. Further signals are ignored meanwhile: nothing interrupts this."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if sig is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launcher.pid, sig)
        deadline = time.monotonic() + (grace() if sig is not None else 0)
        while _descendants() and time.monotonic() < deadline:
            _reap()
            time.sleep(0.05)
        for _ in range(100):
            left = _descendants()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap()
            time.sleep(0.02)
        launcher.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _reap() -> None:
    """Collect our exited children, orphans that were handed to us (subreaper) among them."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _descendants() -> list[int]:
    """Live (not zombie) descendants of this process, from /proc."""
    parent_of, alive = {}, set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()   # after "(comm)", which may hold spaces
                parent_of[int(entry.name)] = int(fields[1])
                if fields[0] != "Z":
                    alive.add(int(entry.name))
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found
        found |= frontier
    return sorted(found & alive)


def _one_line(failures: dict, errors: Path) -> str:
    """The root cause among the failed ranks. The agent stops the survivors with SIGTERM and their
    peers fail in collectives after it, so: a rank killed by another signal (SIGKILL: the OOM killer,
    SIGSEGV...), else the earliest error line a rank wrote itself, else what is known."""
    def rank_of(rank: int) -> tuple[int, float, str]:
        failure, own = failures[rank], errors / f"rank-{rank}"
        if failure.exitcode < 0 and -failure.exitcode not in (signal.SIGTERM, signal.SIGINT):
            return 0, 0.0, f"process {rank} was killed by {failure.signal_name()}"
        if own.exists():
            return 1, own.stat().st_mtime, f"process {rank}: {own.read_text().strip()}"
        if failure.exitcode < 0:
            return 2, 0.0, f"process {rank} was stopped by {failure.signal_name()}"
        return 3, 0.0, f"process {rank} exited with code {failure.exitcode}"
    return min(rank_of(rank) for rank in failures)[2]


def main(argv: list[str]) -> int:
    """The launcher: torchrun's agent in this process, its report reduced to one line in ERRORS_ENV."""
    die_with_parent()
    os.environ.setdefault("LOGLEVEL", "CRITICAL")   # torchrun's warnings and report (its elastic loggers): one line from us instead
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")   # the ranks' C++ logs (Gloo's "connectFullMesh failed")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    errors = Path(os.environ[ERRORS_ENV])
    nproc, args = argv[0], argv[1:]
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "vae_export", *args]))
    except ChildFailedError as e:
        (errors / REPORT).write_text(_one_line(e.failures, errors) + "\n")
        return 1
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

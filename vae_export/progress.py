"""Rich progress displays for long CLI commands, on stderr so stdout keeps only data."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """A bar per epoch (batch, running loss, images/s) and one summary line per epoch."""

    def __init__(self, console: Console, epochs: int, quiet: bool):
        self.console, self.epochs, self.quiet, self.task, self.t0 = console, epochs, quiet, None, 0.0
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.2f}  {task.fields[rate]:,.0f} img/s"),
                            TimeRemainingColumn(), console=console, disable=quiet, transient=True)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def batch(self, p) -> None:  # p: training.train.BatchProgress
        self.epochs = p.epochs or self.epochs   # more than asked on a small dataset (min_steps)
        if self.task is None:
            self.t0 = time.perf_counter()
            self.task = self.bar.add_task("", total=p.batches, loss=p.loss, rate=0.0)
        rate = p.images / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, completed=p.batch, loss=p.loss, rate=rate,
                        description=f"epoch {p.epoch}/{self.epochs}")

    def epoch(self, m: dict) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        if not self.quiet:
            self.console.print(f"epoch {m['epoch']:>3}/{self.epochs}  train {m['train_loss']:8.2f}  "
                               f"test {m['test_loss']:8.2f} (recon {m['test_recon']:.2f}, KL {m['test_kl']:.2f})  "
                               f"PSNR {m.get('test_psnr', float('nan')):.1f} dB  {m['seconds']:.1f} s  {m['train_samples_per_s']:,.0f} img/s")


class SampleProgress:
    """A bar over the samples written (or the images evaluated)."""

    def __init__(self, console: Console, total: int, disable: bool, label: str = "sampling"):
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                            disable=disable, transient=True)
        self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def advance(self, k: int) -> None:
        self.bar.advance(self.task, k)

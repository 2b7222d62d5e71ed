"""Presentation of a `vae_export.bench` report: rich tables for the terminal, a matplotlib figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .bench import ROLES, TRAIN_BATCH, TRAIN_BLOCKS
from .files import atomic_path


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables (decode, encode, train), each followed by what was skipped and why."""
    m, t, s = report["machine"], report["threads"], report["settings"]
    console.print(f"{report['preset']} checkpoint {report['checkpoint']}\n{m['cpu']} (matrix features: "
                  f"{', '.join(m['cpu_features']) or 'none'}), {m['usable_cpus']} of "
                  f"{m['logical_cpus']} CPUs usable, GPU: {m['gpu'] or 'none'}, load average "
                  f"{m['load_average_start']:.2f} -> {m['load_average_end']:.2f}\ntorch {m['torch']} "
                  f"({t['torch']} threads), onnxruntime {m['onnxruntime']} ({t['onnxruntime']} threads)", markup=False)
    for key, what in (("decode", "latents -> images"), ("encode", "images -> (mu, logvar)")):
        table = Table("backend", "batch", "median ms", "p10-p90 ms", "samples/s", "threads", "max |diff|",
                      "first call s", title=f"{key} ({what}), {s['inputs'][key]}: median of {s['repeats']} "
                      f"calls after {s['warmup'] + 1} warm-up", title_justify="left")
        for i, r in enumerate(report[key]["rows"]):
            if i and r["backend"] != report[key]["rows"][i - 1]["backend"]:
                table.add_section()
            diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
            if r["status"] == "ok":
                table.add_row(r["backend"], str(r["batch_size"]), f"{r['median_s'] * 1e3:.3f}",
                              f"{r['p10_s'] * 1e3:.3f}-{r['p90_s'] * 1e3:.3f}", f"{r['samples_per_s']:,.0f}",
                              str(r["threads"] or "-"), diff, f"{r['first_call_s']:.3f}")
            else:
                table.add_row(r["backend"], str(r["batch_size"]), "[red]WRONG[/]", "", "", str(r["threads"] or "-"),
                              f"[red]{diff} > {r['tolerance']:g}[/]", "")
        console.print(table)
        _print_skipped(report[key]["skipped"], console)
    table = Table("preset", "device", "batch", "images/s", "p10-p90 images/s", "ms/step", "threads", "data",
                  title=f"train: median of {TRAIN_BLOCKS} blocks of {s['train_steps']} steps after one warm-up block",
                  title_justify="left")
    for r in report["train"]["rows"]:
        table.add_row(r["preset"], r["device"], str(r["batch_size"]), f"{r['images_per_s']:,.0f}",
                      f"{r['images_per_s_p10']:,.0f}-{r['images_per_s_p90']:,.0f}", f"{r['step_ms']:.2f}",
                      str(r["threads"] or "-"), r["data"])
    if table.rows:
        console.print(table)
    _print_skipped(report["train"]["skipped"], console)


def _print_skipped(skipped: dict[str, str], console: Console) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        console.print(f"skipped {', '.join(names)}: {reason}", markup=False, highlight=False)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Throughput against batch size per backend (bars: p10-p90), and training images/s per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, key in zip(axes, ROLES):
        for name in dict.fromkeys(r["backend"] for r in report[key]["rows"]):
            rows = [r for r in report[key]["rows"] if r["backend"] == name and r["status"] == "ok"]
            b, rate = np.array([r["batch_size"] for r in rows]), np.array([r["samples_per_s"] for r in rows])
            low, high = b / np.array([r["p90_s"] for r in rows]), b / np.array([r["p10_s"] for r in rows])
            ax.errorbar(b, rate, yerr=[rate - low, high - rate], marker="o", capsize=3, label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples/s", title=f"{key} ({report['preset']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    train = report["train"]["rows"]
    axes[2].bar([f"{r['preset']}\n{r['device']}" for r in train], [r["images_per_s"] for r in train], color="tab:gray")
    axes[2].set(ylabel="images/s", title=f"training, batch {TRAIN_BATCH}")
    fig.suptitle(f"{report['machine']['cpu']}, GPU: {report['machine']['gpu'] or 'none'}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)

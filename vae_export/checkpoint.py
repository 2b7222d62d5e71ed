"""Checkpoints: one dict saved atomically with `torch.save`, loaded with `weights_only=True` (a
checkpoint that needs arbitrary unpickling is refused, not run). The config inside rebuilds the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .files import atomic_open
from .config import VAEConfig
from .errors import CheckpointError, first_line
from .model import VAE

FORMAT = "vae-export-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (model, config, optimizer, epoch, metrics, ...) whole or not at all."""
    with atomic_open(path) as f:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint on the CPU; raise CheckpointError with the reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises UnpicklingError, BadZipFile, struct.error, ...
        raise CheckpointError(f"{path} is corrupt or not a safe vae-export checkpoint ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vae-export checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format_version')}, this tool reads {FORMAT_VERSION}")
    return state


def load_model(path: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the eager model (eval mode, CPU) from a checkpoint alone. Returns (model, checkpoint)."""
    state = load_checkpoint(path)
    try:
        model = VAE(VAEConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not match its own config: {first_line(e)}") from None
    return model.eval(), state


"""Checkpoints: one dict saved atomically with `torch.save`, loaded with `weights_only=True` (a
checkpoint that needs arbitrary unpickling is refused, not run). The config inside rebuilds the model.

`load_checkpoint` validates a checkpoint once for every consumer (onnx, parity, bench, train --resume):
its marker and version, its config (every field of the right type), and weights that fit that config.
"""

from __future__ import annotations

import dataclasses
import io
import math
import types
import typing
from pathlib import Path
from typing import Any

import torch

from .files import atomic_open
from .config import VAEConfig
from .errors import CheckpointError, VaeExportError, first_line
from .model import VAE

FORMAT = "vae-export-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (model, config, optimizer, epoch, metrics, ...) whole or not at all. It is
    serialized in memory first, so a full disk surfaces as an OSError naming `path` (torch's own
    writer reports it as an opaque RuntimeError)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, buffer)
    with atomic_open(path) as f:
        f.write(buffer.getbuffer())


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
    config = typed_dataclass(VAEConfig, state.get("config"), f"{path}: config")
    _check_weights(state.get("model"), config, path)
    return state


def load_model(path: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the eager model (eval mode, CPU) from a checkpoint alone. Returns (model, checkpoint)."""
    state = load_checkpoint(path)
    model = VAE(VAEConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def _check_weights(weights: Any, config: VAEConfig, path: Path) -> None:
    """The weights must be exactly those of the config's model: same names, shapes, finite values."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} has no model weights")
    try:
        with torch.device("meta"):  # shapes only: a tampered config must not allocate a huge model
            expected = VAE(config).state_dict()
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: its config does not build a model ({first_line(e)})") from None
    for name, want in expected.items():
        got = weights.get(name)
        # float weights, and BatchNorm's int64 batch counter
        if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.is_floating_point() != want.is_floating_point():
            found = f"shape {tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor) else "missing"
            raise CheckpointError(f"{path} does not match its own config: weight {name} should be "
                                  f"{tuple(want.shape)} {'float' if want.is_floating_point() else want.dtype}, found {found}")
        if not torch.isfinite(got).all():
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise CheckpointError(f"{path} does not match its own config: unexpected weights {extra[:3]}")


def typed_dataclass(cls: type, values: Any, what: str):
    """cls(**values) after checking every value against the field's annotation (int, float, bool,
    str, tuple[int, ...], X | None): a tampered or foreign file is refused in one line instead of
    failing deep inside torch. Missing fields take their defaults; unknown fields are refused."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{what} is missing or not a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise CheckpointError(f"{what} has unknown fields {unknown}")
    converted = {}
    for name, value in values.items():
        ok, value = _conforms(value, hints[name])
        if not ok:
            raise CheckpointError(f"{what}: {name} = {value!r:.60} is not a valid {_type_name(hints[name])}")
        converted[name] = value
    try:
        return cls(**converted)
    except (VaeExportError, TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: {first_line(e)}") from None


def _conforms(value: Any, hint: Any) -> tuple[bool, Any]:
    """(does value fit the annotation, the value with lists turned into tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _conforms(value, arg)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return False, value
        results = [_conforms(v, a) for v, a in zip(value, items)]
        return all(ok for ok, _ in results), tuple(v for _, v in results)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value  # an annotation this checker does not know: the constructor validates it


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")

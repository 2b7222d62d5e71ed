"""Class 6 of issue 17: the embedded runtime stays private. onnxruntime (1.29+) writes a device id and
a telemetry queue under ~/.cache from its first import unless ORT_DISABLE_TELEMETRY=1 is set before it;
vae-export sets it (vae_export/__init__.py) unless the user did. Real subprocesses with a fresh HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXE = Path(sys.executable).parent / "vae-export"
ROOT = Path(__file__).resolve().parents[1]


def _fresh_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    return {**env, "HOME": str(home)}


def _left_in(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*"))


def test_cli_and_runtime_leave_a_fresh_home_empty(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    digit = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
    Image.fromarray(digit).save(work / "digit.png")
    env = _fresh_env(home)
    for args in (["sample", "-n", "4", "--out", "x.png"], ["encode", "digit.png", "--out", "z.npz"]):
        done = subprocess.run([str(EXE), *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert _left_in(home) == [], f"vae-export {args[0]} wrote into HOME"
    program = ("from vae_export.runtime import Decoder\n"
               f"d = Decoder({str(ROOT / 'artifacts/mlp/decoder.onnx')!r})\n"
               "assert d.decode(d.latents(0, 0, 2)).shape[0] == 2\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _left_in(home) == [], "a program embedding vae_export.runtime wrote into HOME"


def test_the_users_own_setting_wins(tmp_path):
    """An explicit value (even "0", telemetry on) is the user's; an empty one (an unset shell
    variable) is not a choice and gets the private default."""
    show = "import os, vae_export; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    for given, expected in (("0", "0"), ("", "1")):
        env = {**_fresh_env(tmp_path), "ORT_DISABLE_TELEMETRY": given}
        done = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == expected, done.stderr

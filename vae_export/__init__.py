"""vae-export: train a VAE, export it, prove parity, sample fast."""

import os
from importlib.metadata import PackageNotFoundError, version

# onnxruntime (1.29+, Linux and macOS) records telemetry from its first import: a device id and an event
# queue under ~/.cache/Microsoft/DeveloperTools. ORT_DISABLE_TELEMETRY=1 before that import is its full
# opt-out. This file runs before any module of ours imports onnxruntime (runtime, export, bench, the CLI,
# torchrun's ranks), so it is the one place to set it; a value the user set (even "0") is theirs.
if not os.environ.get("ORT_DISABLE_TELEMETRY"):
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"

try:
    __version__ = version("vae-export")  # pyproject.toml is the one source, through the installed metadata
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

"""vae-export: train a VAE, export it, prove parity, sample fast."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vae-export")  # pyproject.toml is the one source, through the installed metadata
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

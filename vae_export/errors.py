"""Typed errors. The library raises these; the CLI maps each to one line on stderr and an exit code.

Torch-free on purpose: `vae_export.runtime` imports it.
"""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), for one-line error reports."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class VaeExportError(Exception):
    """A failure the user can act on (bad input, missing data, failed check). Exit code 1."""

    exit_code = 1


class UsageError(VaeExportError):
    """The command was called wrongly (a bad option value, an unknown preset). Exit code 2."""

    exit_code = 2


class ProvenanceError(UsageError):
    """Files given together do not belong together: parts of different runs or with a gap, models of
    different checkpoints, data that changed since training. Exit code 2: the files given are wrong."""


class DataNotFound(VaeExportError):
    """The dataset is not where we looked and cannot be downloaded."""


class InputError(VaeExportError):
    """An input file (images to encode) is unreadable or not in an accepted format."""


class CheckpointError(VaeExportError):
    """A checkpoint is missing, corrupt, or not one of ours."""


class ArtifactError(VaeExportError):
    """An exported file is missing, malformed, or not the model we expect."""


class ParityError(VaeExportError):
    """An export does not compute what the eager model computes, within the stated tolerances."""

    def __init__(self, message: str, rows: list | None = None):
        super().__init__(message)
        self.rows = rows or []


class ProviderUnavailable(VaeExportError):
    """An onnxruntime execution provider was asked for but cannot run here."""


class TrainingDiverged(VaeExportError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, systemd, Slurm, Kubernetes), raised like Ctrl-C so that the same cleanup runs.
    A KeyboardInterrupt subclass on purpose: every handler that cleans up after Ctrl-C cleans up after it."""

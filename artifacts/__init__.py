"""The shipped default model (artifacts/mlp), installed as the package data of `vae_export.artifacts`.

pyproject.toml maps that package name to this folder, so the wheel carries these files without a second
copy in the source tree; this file makes the mapping importable from an editable install too."""

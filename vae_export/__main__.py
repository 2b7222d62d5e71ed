"""`python -m vae_export ...` runs the CLI (what `torchrun -m vae_export` needs)."""

from .cli import main

main()

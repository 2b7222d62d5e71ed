"""vae-export: train a VAE, export it, prove parity, sample fast."""

__version__ = "0.1.0"

import os
import pickle

import pytest
import torch

from vae_export.checkpoint import load_checkpoint, load_model, save_checkpoint
from vae_export.config import make_config
from vae_export.errors import CheckpointError
from vae_export.model import VAE


class Exploit:
    """A pickle that would run a shell command on load: weights_only=True must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/vae-export-pwned",))


def test_round_trip(tmp_path):
    vae = VAE(make_config("conv"))
    save_checkpoint(tmp_path / "c.pt", {"config": vae.config.to_dict(), "model": vae.state_dict()})
    model, state = load_model(tmp_path / "c.pt")
    assert model.config == vae.config and not model.training
    for k, v in vae.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_refuses_missing_corrupt_foreign_and_malicious(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a vae-export checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "vae-export-checkpoint", "x": Exploit()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not os.path.exists("/tmp/vae-export-pwned")
    vae = VAE(make_config("mlp"))
    save_checkpoint(tmp_path / "mismatch.pt", {"config": make_config("mlp-small").to_dict(), "model": vae.state_dict()})
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path / "mismatch.pt")


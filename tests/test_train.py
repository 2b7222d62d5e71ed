"""Real training runs on slices of MNIST: the loss falls, files appear, resume is exact, divergence is caught."""

import json

import pytest
import torch

from vae_export.training.schedule import one_cycle
from vae_export.training.train import TrainSettings, train
from vae_export.checkpoint import load_checkpoint, load_model
from vae_export.config import make_config
from vae_export.errors import CheckpointError, TrainingDiverged, UsageError

FILES = ("checkpoint.pt", "metrics.jsonl", "reconstruction.png", "samples.png", "loss.png")


def test_training_lowers_the_test_loss_and_writes_every_file(mnist_root, tmp_path):
    metrics = train(make_config("mlp"), TrainSettings(epochs=3, limit=3000), tmp_path, data_dir=mnist_root)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"] - 5
    for name in FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == metrics
    assert {"epoch", "train_loss", "test_loss", "test_recon", "test_kl", "seconds"} <= set(lines[0])
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind
    model, state = load_model(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 3 and model.config == make_config("mlp", likelihood="bernoulli")  # auto picked bernoulli on MNIST


def test_conv_preset_trains_and_draws_its_2d_manifold(mnist_root, tmp_path):
    train(make_config("conv"), TrainSettings(epochs=1, limit=500), tmp_path, data_dir=mnist_root)
    assert (tmp_path / "manifold.png").stat().st_size > 0


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_resume_after_an_interruption_matches_an_unbroken_run(mnist_root, tmp_path, schedule):
    settings = TrainSettings(epochs=2, limit=1500, seed=3, lr_schedule=schedule)
    train(make_config("mlp-small"), settings, tmp_path / "whole", data_dir=mnist_root)

    def interrupt(m):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed right after epoch 1 was checkpointed
        train(make_config("mlp-small"), settings, tmp_path / "broken", data_dir=mnist_root, on_epoch=interrupt)
    assert load_checkpoint(tmp_path / "broken" / "checkpoint.pt")["epoch"] == 1
    train(make_config("mlp-small"), settings, tmp_path / "broken", data_dir=mnist_root, resume=True)

    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "broken" / "checkpoint.pt")
    assert resumed["epoch"] == 2
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert whole["metrics"][-1]["test_loss"] == resumed["metrics"][-1]["test_loss"]
    assert whole["optimizer"]["param_groups"][0]["lr"] == resumed["optimizer"]["param_groups"][0]["lr"]
    if schedule == "onecycle":   # it ended on its last, lowest rate
        assert resumed["metrics"][-1]["lr"] < 1e-7 < resumed["metrics"][0]["lr"]


def test_one_cycle_follows_torchs_one_cycle_lr_step_by_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=3e-3)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=500, pct_start=0.25)
    for step in range(500):
        lr, beta1 = one_cycle(step, 500, 3e-3)
        group = optimizer.param_groups[0]
        assert lr == pytest.approx(group["lr"], rel=1e-9) and beta1 == pytest.approx(group["betas"][0], rel=1e-9), step
        optimizer.step()
        if step < 499:
            reference.step()
    assert one_cycle(10**6, 500, 3e-3) == one_cycle(499, 500, 3e-3)   # past the end: the last rate


def test_early_stopping_stops_after_patience_epochs_without_progress(mnist_root, tmp_path):
    # 300 images and a high lr overfit within ~30 epochs, so the test loss turns up and the run must stop
    metrics = train(make_config("mlp"), TrainSettings(epochs=60, limit=300, lr=1e-2, patience=2), tmp_path,
                    data_dir=mnist_root)
    losses = [m["test_loss"] for m in metrics]
    assert len(losses) < 60
    assert min(losses[-2:]) >= min(losses[:-2])


def test_divergence_is_a_clear_error_and_writes_no_checkpoint(mnist_root, tmp_path):
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(make_config("mlp"), TrainSettings(epochs=1, limit=2000, lr=1e10), tmp_path, data_dir=mnist_root)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_refusals(mnist_root, tmp_path):
    with pytest.raises(UsageError):
        TrainSettings(epochs=0)
    with pytest.raises(UsageError):
        TrainSettings(batch_size=-1)
    train(make_config("mlp"), TrainSettings(epochs=1, limit=200), tmp_path, data_dir=mnist_root)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(UsageError, match="--resume"):
        train(make_config("mlp"), TrainSettings(epochs=1, limit=200), tmp_path, data_dir=mnist_root)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # nothing overwritten
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        train(make_config("mlp"), TrainSettings(epochs=2), tmp_path / "other", data_dir=mnist_root, resume=True)

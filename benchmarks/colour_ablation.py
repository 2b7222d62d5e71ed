"""Which part of conv-large decides its colour quality? Trains variants of the preset in process (no
CLI, no export: the ablations of docs/training.md's conv-large section) on colour_quality.py's data
(`--n` images of seed 0) for a number of steps or seconds, and prints held-out PSNR (the 200 images of
seed 12345, reconstructed from mu), colour error and channel spread every 500 steps and at the end.

    python benchmarks/colour_ablation.py --steps 2000                               # today's defaults
    python benchmarks/colour_ablation.py --steps 2000 --latent-channels 0 --latent-dim 64   # flat, fc 256
    python benchmarks/colour_ablation.py --steps 2000 --latent-channels 4 --strides 2,2,2,1  # 4x4 grid
    python benchmarks/colour_ablation.py --seconds 285 --latent-channels 4 --schedule onecycle --lr 3e-3
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from colour_quality import colour_stats, gradient_shapes
from vae_export.config import make_config
from vae_export.likelihood import calibrated_sigma
from vae_export.model import VAE, _conv_block, elbo_terms


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",")) if text else ()


def with_extra_convs(model: VAE, n: int) -> None:
    """n more 3x3 conv blocks after every transposed convolution of the decoder."""
    layers: list[nn.Module] = []
    for m in model.decoder.body:
        layers.append(m)
        ups = [q for q in layers[-3:] if isinstance(q, nn.ConvTranspose2d)]
        if ups and not isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d)):   # after the block's activation
            for _ in range(n):
                layers += _conv_block(nn.Conv2d(ups[0].out_channels, ups[0].out_channels, 3, padding=1),
                                      ups[0].out_channels, model.config)
    model.decoder.body = nn.Sequential(*layers)


@torch.no_grad()
def held_out_figures(model: VAE, x: torch.Tensor) -> dict[str, float]:
    model.eval()
    recon = model.decoder(model.encoder(x)[0]).reshape(x.shape)
    model.train()
    return colour_stats(recon.double().numpy(), x.double().numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (0: --seconds decides)")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--n", type=int, default=2700, help="training images (the CLI trains on 2700 of 3000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=("constant", "onecycle"), default="constant")
    parser.add_argument("--schedule-steps", type=int, default=3000, help="onecycle's length when --seconds decides")
    parser.add_argument("--likelihood", choices=("calibrated", "bernoulli"), default="calibrated")
    parser.add_argument("--latent-channels", type=int, default=None, help="0: a flat latent of --latent-dim")
    parser.add_argument("--latent-dim", type=int, default=None)
    parser.add_argument("--channels", type=ints, default=None)
    parser.add_argument("--strides", type=ints, default=None)
    parser.add_argument("--norm", default=None)
    parser.add_argument("--activation", default=None)
    parser.add_argument("--kl-warmup", type=int, default=0, help="steps over which the KL weight rises from 0 to 1")
    parser.add_argument("--extra-convs", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x_train = torch.from_numpy(gradient_shapes(args.n, seed=0).transpose(0, 3, 1, 2).copy()).float() / 255
    held_out = torch.from_numpy(gradient_shapes(200, seed=12345).transpose(0, 3, 1, 2).copy()).float() / 255
    config = make_config("conv-large", image_shape=(3, 32, 32), likelihood=args.likelihood, latent_dim=args.latent_dim,
                         latent_channels=args.latent_channels, channels=args.channels, strides=args.strides,
                         norm=args.norm, activation=args.activation)
    model = VAE(config)
    with_extra_convs(model, args.extra_convs)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    total = args.steps or args.schedule_steps
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total, pct_start=0.25)
                if args.schedule == "onecycle" else None)
    shuffle = torch.Generator().manual_seed(args.seed)
    t0, step, log = time.perf_counter(), 0, []
    while not (args.steps and step >= args.steps) and not (not args.steps and time.perf_counter() - t0 > args.seconds):
        order = torch.randperm(args.n, generator=shuffle)
        for i in range(0, args.n - args.batch_size + 1, args.batch_size):
            x = x_train[order[i:i + args.batch_size]].contiguous(memory_format=torch.channels_last)
            logits, mu, logvar = model(x)
            sigma = calibrated_sigma(torch.sigmoid(logits), x) if args.likelihood == "calibrated" else None
            recon, kl = elbo_terms(logits, x, mu, logvar, args.likelihood, *([sigma] if sigma is not None else []))
            weight = min(1.0, (step + 1) / args.kl_warmup) if args.kl_warmup else 1.0
            optimizer.zero_grad(set_to_none=True)
            ((recon + weight * kl) / len(x)).backward()
            optimizer.step()
            if schedule and step < total - 1:
                schedule.step()
            step += 1
            if step % 500 == 0:
                log.append([step, round(time.perf_counter() - t0), round(held_out_figures(model, held_out)["psnr_db"], 2)])
            if (args.steps and step >= args.steps) or (not args.steps and time.perf_counter() - t0 > args.seconds):
                break
    seconds = time.perf_counter() - t0
    figures = held_out_figures(model, held_out)
    train_psnr = held_out_figures(model, x_train[:500])["psnr_db"]
    with torch.no_grad():
        model.eval()
        mu, logvar = model.encoder(held_out)
        kl = float(-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean())
        active = int((mu.var(0) > 0.01).sum())
    print(json.dumps({**{k: round(v, 4) for k, v in figures.items()}, "train_psnr_db": round(train_psnr, 2),
                      "kl_nats": round(kl, 1), "active_units": f"{active}/{config.latent_dim}", "steps": step,
                      "seconds": round(seconds), "log_step_seconds_psnr": log,
                      "cpu": next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")}))


if __name__ == "__main__":
    main()

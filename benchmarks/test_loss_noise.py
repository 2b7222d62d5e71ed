"""How much of a reported test loss is evaluation noise: the test loss is a single-sample ELBO
estimate (as pytorch/examples reports it), so the same model scores differently under other noise.

    python benchmarks/test_loss_noise.py artifacts/mlp/checkpoint.pt --draws 10
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae_export.training.data import load_from_settings, resolve_data_dir, to_float  # noqa: E402
from vae_export.training.train import evaluate  # noqa: E402
from vae_export.checkpoint import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--draws", type=int, default=10, help="evaluation noise seeds 1..N")
    args = p.parse_args()
    model, state = load_model(args.checkpoint)
    x = to_float(load_from_settings(state["settings"], resolve_data_dir(os.environ.get("VAE_EXPORT_DATA"))).test)
    losses = [evaluate(model, x, seed=s)["test_loss"] for s in range(1, args.draws + 1)]
    print(f"{args.checkpoint}: test loss over {args.draws} noise draws: " + ", ".join(f"{v:.2f}" for v in losses))
    print(f"mean {statistics.mean(losses):.3f}, stdev {statistics.stdev(losses):.3f}, "
          f"min {min(losses):.2f}, max {max(losses):.2f}")


if __name__ == "__main__":
    main()

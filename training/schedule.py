"""The learning rate as a pure function of the step, so a resumed run picks it up from the step alone
(nothing more in the checkpoint) and every rank of a distributed run agrees.

one-cycle (Smith & Topor 2019, as torch.optim.lr_scheduler.OneCycleLR with pct_start=0.25): over the
first quarter of the steps the rate rises from peak/25 to peak while Adam's beta1 falls from 0.95 to
0.85, then both anneal back along a cosine, the rate to peak/250000. On colour data it trains conv-large
further in the same steps and ends on a low rate, where a constant one leaves the test PSNR swinging by
+-0.3 dB from epoch to epoch (docs/training.md).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "onecycle")
WARM_SHARE, START_DIV, END_DIV = 0.25, 25.0, 1e4
BETA1_HIGH, BETA1_LOW = 0.95, 0.85


def _anneal(start: float, end: float, t: float) -> float:
    """Cosine from start (t = 0) to end (t = 1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def one_cycle(step: int, total: int, peak: float) -> tuple[float, float]:
    """(learning rate, Adam beta1) for optimizer step `step` (0-based) of `total`; past the end, the last."""
    warm = max(1.0, WARM_SHARE * total - 1)
    if step <= warm:
        t = step / warm
        return _anneal(peak / START_DIV, peak, t), _anneal(BETA1_HIGH, BETA1_LOW, t)
    t = (step - warm) / max(1.0, total - 1 - warm)
    return _anneal(peak, peak / START_DIV / END_DIV, t), _anneal(BETA1_LOW, BETA1_HIGH, t)

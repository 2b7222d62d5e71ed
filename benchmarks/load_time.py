"""How long each exported decoder takes to load, cold and warm, in a fresh process that imports only its
runtime (never vae_export): what an application pays at start-up for each format.

    vae-export export artifacts/mlp/checkpoint.pt --out runs/all --format onnx,pt2,aoti,torchscript
    python benchmarks/load_time.py runs/all --runs 5

Per format and run, one fresh interpreter: import the runtime (torch or onnxruntime), load the file
(cold: the first load in the process; some torch versions compile ISA probes on an AOTInductor
package's first load, pytorch#191715), run one batch of 8 latents (first call), then load the same
file again (warm: what a second model, or a reload, costs in a process that has loaded one). Medians
over --runs processes. The cores may be shared: compare only the figures of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

LOADERS = {
    "onnx": ("decoder.onnx", "import onnxruntime as rt, numpy as np",
             "rt.InferenceSession(PATH, providers=['CPUExecutionProvider'])",
             "m.run(None, {'latent_sample': np.zeros((8, m.get_inputs()[0].shape[1]), np.float32)})"),
    "pt2": ("decoder.pt2", "import torch",
            "torch.export.load(PATH).module()", "m(torch.zeros(8, LATENT))"),
    "aoti": ("decoder.aoti.pt2", "import torch",
             "torch._inductor.aoti_load_package(PATH)", "m(torch.zeros(8, LATENT))"),
    "torchscript": ("decoder.torchscript", "import torch, warnings; warnings.simplefilter('ignore')",
                    "torch.jit.load(PATH)", "m(torch.zeros(8, LATENT))"),
}

PROBE = """
import time, json, sys
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
PATH, LATENT = sys.argv[1], int(sys.argv[2])
m = {load}
t2 = time.perf_counter()
{call}
t3 = time.perf_counter()
m = {load}
t4 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "cold_load_s": t2 - t1, "first_call_s": t3 - t2, "warm_load_s": t4 - t3}}))
"""


def measure(folder: Path, fmt: str, runs: int, latent_dim: int) -> dict[str, float]:
    name, imports, load, call = LOADERS[fmt]
    code = PROBE.format(imports=imports, load=load, call=call)
    samples = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code, str(folder / name), str(latent_dim)],
                              capture_output=True, text=True, check=True)
        samples.append(json.loads(done.stdout.splitlines()[-1]))
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an export folder holding decoder.{onnx,pt2,aoti.pt2,torchscript}")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    latent_dim = json.loads((args.folder / "decoder.json").read_text())["latent_dim"] if (
        args.folder / "decoder.json").exists() else 20
    print(f"{'format':<12} {'file':<20} {'MB':>6} {'import s':>9} {'cold load s':>12} {'first call s':>13} {'warm load s':>12}")
    for fmt, (name, *_) in LOADERS.items():
        if not (args.folder / name).exists():
            continue
        m = measure(args.folder, fmt, args.runs, latent_dim)
        print(f"{fmt:<12} {name:<20} {(args.folder / name).stat().st_size / 1e6:>6.2f} {m['import_s']:>9.2f} "
              f"{m['cold_load_s']:>12.3f} {m['first_call_s']:>13.4f} {m['warm_load_s']:>12.4f}", flush=True)


if __name__ == "__main__":
    main()

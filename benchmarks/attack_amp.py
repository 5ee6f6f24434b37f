"""Interleaved timing of hcgnet attack's FGSM on HCGNet-A1 at 28 px (1 channel, 10 classes: Fashion-MNIST's shape),
fp32 against bf16 autocast: `PYTHONPATH=src python benchmarks/attack_amp.py IMAGES BATCH ROUNDS`."""
import argparse
import statistics
import time

import torch
from torch.utils.data import TensorDataset

import hcgnet
from hcgnet.analysis.attack import robustness
from hcgnet.data import DataConfig
from hcgnet.errors import script_errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=int, help="random images attacked per run")
    p.add_argument("batch", type=int, help="images per forward and backward pass")
    p.add_argument("rounds", type=int, help="interleaved rounds of fp32 and bf16")
    args = p.parse_args()
    torch.manual_seed(0)
    model = hcgnet.create_model("hcgnet_a1", num_classes=10, in_chans=1).eval()
    n, batch = args.images, args.batch
    data = TensorDataset(torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    cfg = DataConfig("fashion-mnist", (1, 28, 28), (0.286,), (0.353,), None, [str(i) for i in range(10)])
    times = {"none": [], "bf16": []}
    acc = {}
    for amp in ("none", "bf16"):  # warm-up (oneDNN's first bf16 kernels are slow)
        robustness({"a1": (model, cfg)}, data, "fgsm", [0.01], batch_size=batch, limit=batch, device="cpu", amp=amp)
    for r in range(args.rounds):
        for amp in (("none", "bf16") if r % 2 == 0 else ("bf16", "none")):
            t = time.perf_counter()
            rows = robustness({"a1": (model, cfg)}, data, "fgsm", [0, 0.01], batch_size=batch, device="cpu", amp=amp)
            times[amp].append(time.perf_counter() - t)
            acc[amp] = [x["accuracy"] for x in rows]
    for amp, ts in times.items():
        print(f"{amp}: median {statistics.median(ts):.2f} s for {n} images ({n / statistics.median(ts):.1f} images/s), "
              f"runs {', '.join(f'{t:.2f}' for t in ts)}; accuracy {acc[amp]}")
    print("threads", torch.get_num_threads(), "torch", torch.__version__)


if __name__ == "__main__":
    with script_errors("attack_amp"):  # a mistake in what was asked: one line, exit code 2
        main()

"""The picture of ROBUSTNESS.md: accuracy under each attack against eps, per network, from hcgnet ablate's
summary.csv (mean over the paired seeds and its 95% t-interval).

    python docs/robustness/plot_robustness.py docs/robustness/summary.csv docs/robustness/robustness.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {"base": "HCGNet-A1", "densenet-bc-100-k12": "DenseNet-BC-100 (k=12)", "resnet-56": "ResNet-56"}


def main(source: str, target: str) -> None:
    rows = list(csv.DictReader(open(source)))
    attacks = sorted({k.split("_")[1] for k in rows[0] if k.startswith("attack_") and k.endswith("_mean")
                      and "_diff_" not in k})
    fig, axes = plt.subplots(1, len(attacks), figsize=(5.5 * len(attacks), 4), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for row in rows:
            eps = sorted(float(k.split("_")[2]) for k in row if k.startswith(f"attack_{attack}_")
                         and k.endswith("_mean") and "_diff_" not in k)
            # PGD's column is "pgd" in the committed summary, "pgd-5steps" in one written since 2026-12-07
            if attack.startswith("pgd"):  # eps 0 is the clean accuracy on the same images
                eps = [0.0] + eps
            keys = [f"attack_{'fgsm-any' if e == 0 else attack}_{e:g}" for e in eps]
            mean = [100 * float(row[k + "_mean"]) for k in keys]
            low = [100 * float(row[k + "_low"]) for k in keys]
            high = [100 * float(row[k + "_high"]) for k in keys]
            ax.errorbar(eps, mean, yerr=[[m - lo for m, lo in zip(mean, low)], [h - m for m, h in zip(mean, high)]],
                        marker="o", capsize=3, label=NAMES.get(row["variant"], row["variant"]))
        how = "wrong if any step up to eps fools it" if attack == "fgsm-any" else "5 steps of 2.5 eps / 5"
        ax.set_title(f"{attack}: {how}")
        ax.set_xlabel("eps (pixel units, images in [0, 1])")
        ax.set_ylabel("top-1 on the attacked images (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Fashion-MNIST, 5 paired seeds, 200 steps each; first 100 test images attacked")
    fig.tight_layout()
    fig.savefig(target, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""The picture of ``hcgnet attack``'s result: accuracy against eps, one line per model (matplotlib only here, so
the attacks themselves import and test without it)."""
from pathlib import Path
from typing import Any, Dict, Union

from hcgnet.analysis.attack import attack_name, heading_counts


def plot(result: Dict[str, Any], path: Union[str, Path]) -> None:
    """``result`` of :func:`hcgnet.analysis.attack.attack_checkpoints` (or the same keys) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in result["models"]:
        points = sorted((r["eps"], 100 * r["accuracy"]) for r in result["rows"]
                        if r["model"] == model and r["accuracy"] is not None)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
    ax.set_xlabel("eps (pixel units, images in [0, 1])")
    ax.set_ylabel("top-1 accuracy on attacked images (%)")
    ax.set_title(f"{attack_name(result)}\non {result['data']} ({heading_counts(result)})", fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

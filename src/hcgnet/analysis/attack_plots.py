"""The picture of ``hcgnet attack``'s result: accuracy against eps, one line per model with its 95% Wilson
interval as a band (matplotlib only here, so the attacks themselves import and test without it)."""
from pathlib import Path
from typing import Any, Dict, Union

from hcgnet.analysis.attack import attack_name, heading_counts


def plot(result: Dict[str, Any], path: Union[str, Path]) -> None:
    """``result`` of :func:`hcgnet.analysis.attack.attack_checkpoints` (or the same keys) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    banded = False
    for model in result["models"]:
        rows = sorted((r for r in result["rows"] if r["model"] == model and r["accuracy"] is not None),
                      key=lambda r: r["eps"])
        line, = ax.plot([r["eps"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o", label=model)
        if rows and all(r.get("ci95_low") is not None for r in rows):  # a result written before the intervals has none
            ax.fill_between([r["eps"] for r in rows], [100 * r["ci95_low"] for r in rows],
                            [100 * r["ci95_high"] for r in rows], color=line.get_color(), alpha=0.15, linewidth=0)
            banded = True
    ax.set_xlabel("eps (pixel units, images in [0, 1])" + ("; bands: 95% Wilson intervals" if banded else ""))
    ax.set_ylabel("top-1 accuracy on attacked images (%)")
    ax.set_title(f"{attack_name(result)}\non {result['data']} ({heading_counts(result)})", fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

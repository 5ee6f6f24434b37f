"""The paper's studies on any checkpoint: accuracy under attack (attack.py), network dissection
(dissect.py), and where the gates look (attention.py). Each is a library function; ``hcgnet attack``,
``hcgnet dissect`` and ``hcgnet attention`` are thin shells over them.

The names below load on first use (the command line reads the attacks' defaults without importing torch)."""
from hcgnet.analysis.paper import ATTACKS, PAPER_ATTACK, PAPER_EPS
from hcgnet.lazy import lazy_dir, lazy_exports

_LATER = {
    **dict.fromkeys(("fgsm", "fgsm_any", "pgd", "robustness"), "hcgnet.analysis.attack"),
    **dict.fromkeys(("attention_study", "gate_maps"), "hcgnet.analysis.attention"),
    **dict.fromkeys(("attention_grid", "weights_plot"), "hcgnet.analysis.attention_plots"),
    **dict.fromkeys(("Broden", "BrodenError"), "hcgnet.analysis.broden"),
    **dict.fromkeys(("DissectError", "LayerResult", "Tally", "TopQuantile", "dissect"), "hcgnet.analysis.dissect"),
}

__all__ = ["ATTACKS", "PAPER_ATTACK", "PAPER_EPS", *_LATER]

__getattr__ = lazy_exports(__name__, _LATER)
__dir__ = lazy_dir(__name__, _LATER)

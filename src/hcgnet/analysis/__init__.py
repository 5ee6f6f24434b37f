"""The paper's studies on any checkpoint: accuracy under attack (attack.py), network dissection
(dissect.py), and where the gates look (attention.py). Each is a library function; ``hcgnet attack``,
``hcgnet dissect`` and ``hcgnet attention`` are thin shells over them."""
from hcgnet.analysis.attack import ATTACKS, fgsm, fgsm_any, pgd, robustness
from hcgnet.analysis.attention import attention_study, gate_maps
from hcgnet.analysis.attention_plots import attention_grid, weights_plot
from hcgnet.analysis.broden import Broden, BrodenError
from hcgnet.analysis.dissect import DissectError, LayerResult, Tally, TopQuantile, dissect

__all__ = [
    "ATTACKS", "Broden", "BrodenError", "DissectError", "LayerResult", "Tally", "TopQuantile", "attention_grid",
    "attention_study", "dissect", "fgsm", "fgsm_any", "gate_maps", "pgd", "robustness", "weights_plot",
]

"""The paper's studies on any checkpoint: accuracy under attack (attack.py), network dissection
(dissect.py), and where the gates look (attention.py). Each is a library function; ``hcgnet attack``,
``hcgnet dissect`` and ``hcgnet attention`` are thin shells over them."""
from hcgnet.analysis.attack import ATTACKS, fgsm, fgsm_any, pgd, robustness  # noqa: E402  (hcgnet attack)

"""The attacks and the paper's measure as plain data (no torch: the command line's defaults come from here)."""
ATTACKS = ("fgsm-any", "fgsm", "pgd")
#: The paper's measure, and the eps of its Figure 5 and robustness table (ImageNet, pixel units).
PAPER_ATTACK = "fgsm-any"
PAPER_EPS = (0.0, 0.001, 0.002, 0.003, 0.004, 0.005)
#: PGD's iterations unless told otherwise.
PGD_STEPS = 10

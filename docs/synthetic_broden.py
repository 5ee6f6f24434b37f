"""Write a small synthetic data set in the Broden layout, to try ``hcgnet dissect`` without Broden (about 1 GB,
not downloadable here). It made the pictures of the README's dissect section:

    python docs/synthetic_broden.py /tmp/synthetic_broden            # 240 images, a few seconds
    hcgnet dissect --checkpoint tests/fixtures/cifar_A1.official.pth.tar --model hcgnet_a1 \\
        --broden /tmp/synthetic_broden --output /tmp/dissect-a1

The generator is :func:`hcgnet.analysis.broden.write_synthetic` (so that an installed hcgnet has it too:
``python -m hcgnet.analysis.broden NEW_FOLDER``); this script is the same command, kept where the README
first named it. ``--help`` for the options; a folder that already holds files is refused unless ``--force``.
"""
from hcgnet.analysis.broden import main

if __name__ == "__main__":
    raise SystemExit(main(prog="docs/synthetic_broden.py"))

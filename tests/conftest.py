import numpy as np
import pytest
from PIL import Image


def make_image_folder(root, classes=3, per_class=12, size=(20, 20), seed=0):
    """Class folders of small PNGs, each class its own colour plus noise (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220)]
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(colours[c % len(colours)], dtype=np.float64)
            pixels = np.clip(base + rng.normal(0, 40, size=(*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images")

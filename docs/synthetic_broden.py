"""Write a small synthetic data set in the Broden layout, to try ``hcgnet dissect`` without Broden (about 1 GB,
not downloadable here). It made the pictures of the README's dissect section:

    python docs/synthetic_broden.py /tmp/synthetic_broden            # 240 images, a few seconds
    hcgnet dissect --checkpoint tests/fixtures/cifar_A1.official.pth.tar --model hcgnet_a1 \\
        --broden /tmp/synthetic_broden --output /tmp/dissect-a1

Each 64 x 64 image has a background that is one of two textures (whole-image labels ``striped`` and
``dotted``) at one of two brightnesses (scene labels ``dark room`` / ``bright room``), and one to three
shapes (objects ``disc``, ``square``, ``bar``), each in one of four colours (colors ``red``, ``green``,
``blue``, ``yellow``). Masks are at 32 x 32, Broden's half resolution; label numbers are encoded as Broden
does (red + 256 * green). The concepts are simple on purpose: the set says whether the pipeline finds
colour and shape detectors, not what a network learned about the real world.
"""
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE, SEG = 64, 32
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
OBJECTS = ("disc", "square", "bar")
SCENES = ("dark room", "bright room")
TEXTURES = ("striped", "dotted")
CATEGORIES = ("color", "object", "scene", "texture")


def numbering():
    """label number -> (name, category); 0 is "no label", as in Broden."""
    names = ([(c, "color") for c in COLORS] + [(o, "object") for o in OBJECTS] + [(s, "scene") for s in SCENES]
             + [(t, "texture") for t in TEXTURES])
    return {i + 1: item for i, item in enumerate(names)}


def encode(labels):
    out = np.zeros((*labels.shape, 3), np.uint8)
    out[..., 0], out[..., 1] = labels % 256, labels // 256
    return out


def draw_image(rng, number):
    scene, texture = int(rng.integers(2)), int(rng.integers(2))
    base = 60 if scene == 0 else 170
    img = np.full((SIDE, SIDE, 3), base, np.float64)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    pattern = (yy // 4) % 2 == 0 if texture == 0 else ((yy % 8 < 3) & (xx % 8 < 3))
    img[pattern] += 35
    canvas = Image.fromarray(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    color_layer = Image.new("L", (SIDE, SIDE), 0)
    object_layer = Image.new("L", (SIDE, SIDE), 0)
    draw, dc, do = ImageDraw.Draw(canvas), ImageDraw.Draw(color_layer), ImageDraw.Draw(object_layer)
    for _ in range(int(rng.integers(1, 4))):
        shape, colour = OBJECTS[int(rng.integers(3))], list(COLORS)[int(rng.integers(4))]
        s = int(rng.integers(12, 26))
        x, y = int(rng.integers(0, SIDE - s)), int(rng.integers(0, SIDE - s))
        box = (x, y, x + s, y + s) if shape != "bar" else (x, y + s // 3, x + s, y + 2 * s // 3)
        paint = getattr(draw, "ellipse" if shape == "disc" else "rectangle")
        paint(box, fill=COLORS[colour])
        getattr(dc, "ellipse" if shape == "disc" else "rectangle")(box, fill=number[(colour, "color")])
        getattr(do, "ellipse" if shape == "disc" else "rectangle")(box, fill=number[(shape, "object")])
    half = lambda layer: np.asarray(layer.resize((SEG, SEG), Image.NEAREST), np.int64)
    return (canvas, half(color_layer), half(object_layer), number[(SCENES[scene], "scene")],
            number[(TEXTURES[texture], "texture")])


def write(root, images=240, seed=0):
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=False)
    labels = numbering()
    number = {v: k for k, v in labels.items()}
    rng = np.random.default_rng(seed)
    rows, counts, cover = [], {}, {}
    for i in range(images):
        image, color, obj, scene, texture = draw_image(rng, number)
        image.save(root / "images" / f"{i:04d}.jpg", quality=92)
        Image.fromarray(encode(color)).save(root / "images" / f"{i:04d}_color.png")
        Image.fromarray(encode(obj)).save(root / "images" / f"{i:04d}_object.png")
        for n in {*np.unique(color), *np.unique(obj), scene, texture} - {0}:
            counts[int(n)] = counts.get(int(n), 0) + 1
            # coverage in whole images, as Broden's tables give it (whole-image labels cover their image)
            share = 1.0 if n in (scene, texture) else float(((color == n) | (obj == n)).mean())
            cover[int(n)] = cover.get(int(n), 0.0) + share
        rows.append(dict(image=f"{i:04d}.jpg", split="train", ih=SIDE, iw=SIDE, sh=SEG, sw=SEG,
                         color=f"{i:04d}_color.png", object=f"{i:04d}_object.png", scene=scene, texture=texture))
    with open(root / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(root / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        writer.writerow([0, "-", "-", 0, 0, ""])
        for n, (name, cat) in labels.items():
            writer.writerow([n, name, f"{cat}({counts.get(n, 0)})", counts.get(n, 0), f"{cover.get(n, 0.0):.4f}", ""])
    with open(root / "category.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "first", "last", "count", "frequency"])
        for cat in CATEGORIES:
            ns = [n for n, (_, c) in labels.items() if c == cat]
            writer.writerow([cat, min(ns), max(ns), len(ns), images])
            with open(root / f"c_{cat}.csv", "w", newline="") as c:   # the category's labels, coded from 1
                table = csv.writer(c)
                table.writerow(["code", "number", "name", "frequency", "coverage"])
                table.writerow([0, 0, "-", 0, 0])
                for code, n in enumerate(ns, start=1):
                    table.writerow([code, n, labels[n][0], counts.get(n, 0), f"{cover.get(n, 0.0):.4f}"])
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/synthetic_broden.py NEW_FOLDER")
    print(f"wrote {write(sys.argv[1])}")

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open

import hcgnet

import timing


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny forward passes: one intra-op thread avoids the stalls two threads suffer when the
    two cores are shared with another process (an A1 forward took ~9 s instead of ~0.1 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small trained classifier and the image folder it was trained on: HCGNet-(1,1,1)-(k=8,8,8) trained by
    ``hcgnet train`` (2 epochs, batch 32, --image-size 8, --val-size 40 --test-size 400, seed 0) on
    ``fixtures/int8_colours.safetensors``: 4 classes x 200 8x8 images, a class colour plus Gaussian noise (sd 70),
    so some test images sit near a class boundary. Its run scored 94.50% top-1 (378 of 400) and loss 0.28720328
    on its 400 test images (the run's results.json). The images are written back as the PNG folder the run read
    (same names, so the same split) and the checkpoint's recorded data points at it."""
    base = tmp_path_factory.mktemp("int8")
    data = load_file(FIXTURES / "int8_colours.safetensors")
    folder = base / "images"
    counters = {}
    for image, label in zip(data["images"].numpy(), data["labels"].tolist()):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
        i = counters[label] = counters.get(label, -1) + 1
        Image.fromarray(image).save(folder / f"class_{label}" / f"{i:03d}.png")
    source = FIXTURES / "int8_colours_model.safetensors"
    with safe_open(source, "pt") as f:
        meta = dict(f.metadata())
    path = base / "model.safetensors"
    hcgnet.save_safetensors(load_file(source), path, {**meta, "data": f"imagefolder:{folder}"})
    return path, folder


#: The trained fixture's test top-1 and loss, from its training run's results.json (378 of 400 images).
TRAINED_TOP1 = 0.945
TRAINED_LOSS = 0.28720328


@pytest.fixture(scope="session")
def test_set(trained):
    """The trained fixture's 400 test images: (model, checkpoint metadata, images, labels, fp32 eager logits),
    the logits checked against the training run's top-1 first."""
    from hcgnet.inference import checkpoint_split, load_model, model_io

    path, _ = trained
    model, meta = load_model(str(path))
    dataset, _ = checkpoint_split(meta["data"], None, "test", meta, model_io(model, meta), str(path), False)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        logits = model(x)
    assert len(y) == 400 and (logits.argmax(1) == y).float().mean().item() == pytest.approx(TRAINED_TOP1)
    return model, meta, x, y, logits


def load_script(path, name=None):
    """A script that is not a package module (benchmarks/, docs/) imported from its file."""
    import importlib.util

    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def silent_options(parser, path=""):
    """The options of ``parser`` and of its subcommands, recursively, that have no help text, each named with the
    command it belongs to ("hcgnet bench --model")."""
    import argparse

    silent = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                silent += silent_options(sub, f"{path} {name}".strip())
        elif not action.help:
            silent.append(f"{path} {'/'.join(action.option_strings) or action.dest}".strip())
    return silent


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


def picture(path, seed, size=(18, 22)):
    """One noise image of ``size`` (H, W) at ``path`` (its folder created): a file a user might pass."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(*size, 3)).astype(np.uint8)).save(path)
    return path


def cli(capsys, *argv):
    """``hcgnet ARGV`` in this process: (exit code, stdout, stderr); a usage mistake's SystemExit gives its code."""
    from hcgnet.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's way out of a usage mistake
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def signal_at_step(monkeypatch, signum, at):
    """Send this process `signum` after optimiser step `at` (as a scheduler or Ctrl-C would), from the progress
    lines both trainers report every step to."""
    import os

    from hcgnet.training.logs import ProgressLines

    real_step = ProgressLines.step

    def step(self, global_step, loss, lr):
        real_step(self, global_step, loss, lr)
        if global_step == at:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(ProgressLines, "step", step)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images")


# The slow marker, by measured time (tests/timing.py).
def pytest_addoption(parser):
    parser.addoption("--record-durations", default=None, metavar="FILE",
                     help="write each test's call time (seconds) to FILE as JSON (tests/durations.json marks slow tests)")


def pytest_configure(config):
    target = config.getoption("--record-durations")
    worker = getattr(config, "workerinput", None)   # set in pytest-xdist's worker processes
    if target and worker is None:   # the controller sees every worker's reports; a worker would write a part
        config.pluginmanager.register(timing.Recorder(target), "hcgnet-durations")
    if worker is not None:
        share_the_cores(worker["workercount"])


def share_the_cores(workers):
    """Under ``pytest -n N``, each worker's share of the cores, for its own torch and for the processes its tests
    start (OMP_NUM_THREADS): N workers of all threads each would oversubscribe the cores, and OpenMP threads that
    wait for a core spin (a forward pass slowed from 0.1 s to 9 s)."""
    import os

    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def pytest_collection_modifyitems(config, items):
    timing.mark_slow(items, timing.read_durations())


def pytest_deselected(items):
    timing.DESELECTED.update(item.nodeid for item in items)

"""Accuracy under attack: hcgnet.analysis.attack and ``hcgnet attack``.

The attacks are checked against torchattacks (an established library, a test-only dependency), and by
properties that hold whatever the model: accuracy at eps 0 is ``hcgnet eval``'s, FGSM's accuracy never rises
with eps on a trained linear model, PGD with more steps is never weaker, foolbox 2's measure is never above
FGSM's. The command runs on checkpoints of a tiny HCGNet, a tiny timm ResNet (a baseline trained with
``hcgnet train --model test_resnet``) and a 1-channel HCGNet trained on a (generated) Fashion-MNIST.
"""
import csv
import hashlib
import json
from pathlib import Path
import struct

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hcgnet
from conftest import cli, make_image_folder
from hcgnet.analysis.attack import fgsm, fgsm_any, pgd, robustness
from hcgnet.cli import main
from hcgnet.data import DataConfig
from hcgnet.errors import HCGNetError
from hcgnet.inference import evaluate_checkpoint

import torchattacks  # noqa: E402  (a test dependency: a missing one must fail, not skip)

SPEC = "HCGNet-(1,1,1)-(k=4,4,4)"
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def one_line_error(code, out, err):
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hcgnet: error: ") and "Traceback" not in err
    return lines[0]


class Pixels(nn.Module):
    """The model on [0, 1] pixels, written here rather than taken from hcgnet, for the reference libraries."""

    def __init__(self, model, mean=MEAN, std=STD):
        super().__init__()
        self.model, self.mean, self.std = model, torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def tiny_cnn(in_chans=3, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, classes)).eval()


def config(channels=3, mean=MEAN, std=STD, classes=3):
    return DataConfig("imagefolder", (channels, 8, 8), mean[:channels], std[:channels], None,
                      [str(i) for i in range(classes)])


def accuracies(rows, model):
    return [r["accuracy"] for r in rows if r["model"] == model]


# ------------------------------------------------------------------------------------------------ the attacks


def test_fgsm_gives_torchattacks_images_on_a_small_hcgnet():
    import hcgnet

    torch.manual_seed(0)
    model = hcgnet.create_model(SPEC, num_classes=3).eval()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    for eps in (0.004, 0.03):
        ours = fgsm(model, x, y, eps, MEAN, STD)
        # torchattacks' set_normalization_used expects normalised inputs; give it the same [0, 1] pixels model
        theirs = torchattacks.FGSM(Pixels(model), eps=eps)(x, y)
        assert torch.equal(ours, theirs)
        change = (ours - x).abs()
        assert change.max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1
        inside = (x > eps) & (x < 1 - eps)  # no clipping there: exactly one step of eps
        assert torch.allclose(change[inside], torch.full_like(change[inside], eps))


def test_pgd_one_step_gives_torchattacks_images():
    model = tiny_cnn()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 3, (16,))
    ours = pgd(model, x, y, 0.05, steps=1, step_size=0.02, mean=MEAN, std=STD)
    theirs = torchattacks.PGD(Pixels(model), eps=0.05, alpha=0.02, steps=1, random_start=False)(x, y)
    right = Pixels(model)(x).argmax(1) == y  # hcgnet leaves already misclassified images as they are
    assert right.any()
    assert torch.allclose(ours[right], theirs[right], atol=1e-6)
    assert torch.equal(ours[~right], x[~right])
    # many steps larger than eps stay in the eps-ball and in [0, 1]
    far = pgd(model, x, y, 0.05, steps=6, step_size=0.04, random_start=True,
              generator=torch.Generator().manual_seed(0), mean=MEAN, std=STD)
    assert (far - x).abs().max() <= 0.05 + 1e-6 and far.min() >= 0 and far.max() <= 1


def separable_data(n=200, seed=0):
    """Two classes of 1x8x8 images: dark (0.35) and bright (0.65), plus noise; clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.35 + 0.3 * y.view(-1, 1, 1, 1).float() + 0.08 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def train_linear(steps):
    """A linear classifier of ``separable_data`` (normalised with mean 0.5, std 0.25), trained ``steps`` Adam steps."""
    x, y = separable_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model((x - 0.5) / 0.25), y).backward()
        opt.step()
    return model.eval(), x, y


@pytest.fixture(scope="module")
def trained_linear():
    return train_linear(60)


def test_fgsm_accuracy_never_rises_with_eps_on_a_trained_model(trained_linear):
    # On a trained linear model the loss's input gradient has the same sign everywhere, so a larger eps moves
    # every pixel further the same way and the margin of the true class only shrinks: accuracy cannot rise.
    # On a random (or any non-linear) network it may: FGSM is one step along the gradient's sign *at x*, and
    # a longer step can overshoot the region of wrong classes near x into one of the right class -- the
    # loss surface is not linear that far, least of all for an untrained network's arbitrary boundaries.
    model, x, y = trained_linear
    eps = [0, 0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.2, 0.3]
    acc = accuracies(robustness({"linear": (model, config(1, (0.5,), (0.25,), 2))}, TensorDataset(x, y), "fgsm",
                                eps, batch_size=64, device="cpu"), "linear")
    assert acc[0] > 0.95  # it learned
    assert acc[-1] < 0.5  # and the attack bites
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc


def test_pgd_more_steps_is_at_least_as_strong(trained_linear):
    model, x, y = trained_linear
    data, cfg = TensorDataset(x, y), config(1, (0.5,), (0.25,), 2)
    by_steps = {}
    for steps in (1, 2, 5, 10):
        rows = robustness({"linear": (model, cfg)}, data, "pgd", [0.05, 0.15], steps=steps, step_size=0.02,
                          random_start=False, device="cpu")
        by_steps[steps] = accuracies(rows, "linear")
    for e in range(2):
        series = [by_steps[s][e] for s in (1, 2, 5, 10)]
        assert all(a >= b for a, b in zip(series, series[1:])), series
    assert by_steps[10][1] < by_steps[1][1]  # and more steps do find more
    # an image fooled after one step stays that first adversarial image, however many steps follow
    net = Pixels(model, (0.5,), (0.25,))
    one, many = (pgd(model, x, y, 0.3, steps=n, step_size=0.2, mean=(0.5,), std=(0.25,)) for n in (1, 8))
    fooled = net(one).argmax(1) != y
    assert fooled.any() and torch.equal(many[fooled], one[fooled])
    model = tiny_cnn(seed=1)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 3, (16,))
    data = TensorDataset(x, y)
    # the same random start (seed) is reproducible
    twice = [accuracies(robustness({"cnn": (model, config())}, data, "pgd", [0.03], steps=3, random_start=True,
                                   seed=5, device="cpu"), "cnn") for _ in range(2)]
    assert twice[0] == twice[1]


class Threshold(nn.Module):
    """Two classes: class 1 once the image's mean pixel passes ``t`` (logits 0 and 50 (m - t)). The loss of
    label 0 rises with every pixel, so each signed step moves every pixel up by the step size."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), 50 * (m - self.t)], 1)


def test_pgd_default_step_size_is_2_5_eps_over_steps():
    # eps 0.2, 10 steps: steps of 0.05 from 0.3 reach 0.35 (still class 0), then 0.40, past 0.36: the first
    # adversarial, kept. Steps of eps / steps = 0.02 would stop at 0.38, of eps at 0.5.
    x, y = torch.full((1, 1, 2, 2), 0.3), torch.zeros(1, dtype=torch.long)
    adv = pgd(Threshold(0.36), x, y, 0.2, steps=10)
    assert torch.allclose(adv, torch.full_like(x, 0.40), atol=1e-6), adv.flatten()


@pytest.mark.parametrize("options, message", [
    ({"steps": 2.0}, "--steps must be a whole number of 1 or more, got 2.0"),
    ({"steps": True}, "--steps must be a whole number of 1 or more, got True"),
    ({"limit": 2.5}, "--limit must be a whole number of 1 or more, got 2.5"),
    ({"limit": "10"}, "--limit must be a whole number of 1 or more, got '10'"),
])
def test_a_library_caller_gets_the_same_one_line_refusals(options, message):
    """Counts a Python caller passes are checked as the CLI's ints are: 2.5 images went on to a TypeError."""
    from hcgnet.analysis.attack import check_options

    with pytest.raises(HCGNetError) as e:
        check_options("pgd", [0.1], **options)
    assert str(e.value) == message
    with pytest.raises(HCGNetError, match="--steps must be a whole number"):
        pgd(nn.Identity(), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), 0.1, steps=1.5)


def test_pgd_starts_from_the_same_random_point_at_every_eps(monkeypatch):
    import hcgnet.analysis.attack as attack

    # Labels the model never gives: every image is misclassified at its random start, so PGD returns the start
    # itself, x + eps * u with u uniform in [-1, 1] (clipped to [0, 1]); u must be the same at every eps.
    x = torch.full((6, 1, 4, 4), 0.5)
    y = torch.ones(6, dtype=torch.long)
    starts, run = {}, attack.run_attack

    def spy(name, net, images, labels, eps, **kwargs):
        adv = run(name, net, images, labels, eps, **kwargs)
        starts.setdefault(eps, []).append(adv)
        return adv

    monkeypatch.setattr(attack, "run_attack", spy)
    robustness({"m": (Threshold(2.0), config(1, (0.0,), (1.0,), 2))}, TensorDataset(x, y), "pgd", [0.1, 0.2, 0.4],
               steps=3, random_start=True, seed=3, batch_size=4, device="cpu")
    u = {eps: (torch.cat(found) - 0.5) / eps for eps, found in starts.items()}  # no clipping: |eps u| <= 0.4
    assert u[0.1].abs().max() > 0.5 and u[0.1].std() > 0.2  # a real random draw, not 0 or a constant
    assert u[0.1].abs().max() <= 1 + 1e-5
    torch.testing.assert_close(u[0.2], u[0.1], atol=1e-5, rtol=0)
    torch.testing.assert_close(u[0.4], u[0.1], atol=1e-5, rtol=0)
    # and the draw is the seed's: batches of 4 and 2 from one CPU generator seeded with 3
    g = torch.Generator().manual_seed(3)
    expected = torch.cat([torch.rand((4, 1, 4, 4), generator=g), torch.rand((2, 1, 4, 4), generator=g)]) * 2 - 1
    torch.testing.assert_close(u[0.1], expected, atol=1e-5, rtol=0)


def test_fgsm_any_is_never_above_fgsm(trained_linear):
    model, x, y = trained_linear
    cfg, data = config(1, (0.5,), (0.25,), 2), TensorDataset(x, y)
    eps = [0, 0.05, 0.1, 0.2, 0.3]
    one = accuracies(robustness({"m": (model, cfg)}, data, "fgsm", eps, device="cpu"), "m")
    anyeps = accuracies(robustness({"m": (model, cfg)}, data, "fgsm-any", eps, device="cpu"), "m")
    assert one[0] == anyeps[0]
    assert all(a <= b for a, b in zip(anyeps, one)), (anyeps, one)
    # per image: whatever FGSM at eps fools, fgsm-any fools too, within eps
    net = Pixels(model, (0.5,), (0.25,))
    fooled = net(fgsm(model, x, y, 0.2, (0.5,), (0.25,))).argmax(1) != y
    adv = fgsm_any(model, x, y, 0.2, (0.5,), (0.25,))
    assert fooled.any() and bool(((net(adv).argmax(1) != y) | ~fooled).all())
    assert (adv - x).abs().max() <= 0.2 + 1e-6


class Wave(nn.Module):
    """Two classes; logits (s, -s) with s = 4 cos(2 pi (m - 0.17) / 0.2) + 2 of the image's mean pixel m. Class 0
    where s > 0: m within 0.067 of 0.17 + 0.2 k. Non-linear, so a longer step along the gradient's sign can
    overshoot the wrong band into a right one again, where single-step FGSM and foolbox's measure part ways."""

    def forward(self, x):
        s = 4 * torch.cos(2 * np.pi * (x.mean(dim=(1, 2, 3)) - 0.17) / 0.2) + 2
        return torch.stack([s, -s], 1)


#: One uniform 1x4x4 image per case at eps 0.1 (label 0): already wrong; fooled by the step of eps (and by
#: smaller ones); fooled only by smaller steps (eps overshoots, twice); held at the bound 1 by clipping, never
#: fooled; already wrong.
WAVE_PIXELS = (0.10, 0.19, 0.215, 0.205, 0.99, 0.5)


def wave_images():
    x = torch.tensor(WAVE_PIXELS).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return x, torch.zeros(len(WAVE_PIXELS), dtype=torch.long)


def foolbox2_fgsm(net, x, y, eps):
    """foolbox 2.4's ``GradientSignAttack`` called as the published script did (``epsilons=[eps]``), written out
    from its ``SingleStepGradientBaseAttack._run``, image by image: None where it finds no adversarial (its NaN)."""
    found = []
    for xi, yi in zip(x, y):
        xi, yi = xi[None], yi[None]
        if net(xi).argmax(1) != yi:  # already misclassified: returned as it is, the attack not run
            found.append(xi[0])
            continue
        xg = xi.clone().requires_grad_(True)
        nn.functional.cross_entropy(net(xg), yi, reduction="sum").backward()
        gradient = xg.grad.sign() * (1 - 0)  # sign times (max - min) of the bounds (0, 1)
        epsilons, adversarial = [eps], None
        for _ in range(2):  # the given eps, then 20 smaller steps up to it
            for i, epsilon in enumerate(epsilons):
                perturbed = (xi + gradient * float(epsilon)).clamp(0, 1)
                if net(perturbed).argmax(1) != yi:
                    adversarial = perturbed[0]
                    break
            if adversarial is not None:
                break
            epsilons = np.linspace(0, epsilons[i], num=20 + 1)[1:]
        found.append(adversarial)
    return found


def test_fgsm_any_is_foolbox_2s_fgsm_case_by_case():
    net, (x, y), eps = Wave(), wave_images(), 0.1
    expected = foolbox2_fgsm(net, x, y, eps)
    ours = fgsm_any(net, x, y, eps)
    for i, want in enumerate(expected):
        if want is None:  # foolbox: no adversarial (NaN, counted correct); here the step of eps, still correct
            assert net(ours[i:i + 1]).argmax(1).item() == 0
            assert torch.equal(ours[i], fgsm(net, x, y, eps)[i])
        else:
            assert torch.allclose(ours[i], want, atol=1e-6), (WAVE_PIXELS[i], ours[i, 0, 0, 0], want[0, 0, 0])
    # each rule was exercised: the image left as it is, eps kept although smaller steps fool too, a smaller step
    # where eps overshoots, clipping at 1, no adversarial
    assert torch.equal(ours[0], x[0])
    assert ours[1, 0, 0, 0].item() == pytest.approx(0.29)
    assert 0.21 < ours[2, 0, 0, 0].item() < 0.25 and 0.2 < ours[3, 0, 0, 0].item() < 0.25
    assert ours[4].eq(1).all() and expected[4] is None
    # so the two measures part: FGSM spares the overshot images, foolbox's measure does not
    rows = {a: accuracies(robustness({"w": (net, config(1, (0.0,), (1.0,), 2))}, TensorDataset(x, y), a, [0, eps],
                                     device="cpu"), "w") for a in ("fgsm", "fgsm-any")}
    assert rows["fgsm"] == [pytest.approx(4 / 6), pytest.approx(3 / 6)]
    assert rows["fgsm-any"] == [pytest.approx(4 / 6), pytest.approx(1 / 6)]


def test_fgsm_any_matches_foolbox_2_4_itself(monkeypatch):
    """The same check against foolbox 2.4 itself (the test extra installs it; skipped where it is missing or is
    foolbox 3, which has another API)."""
    import collections
    import collections.abc

    for name in ("Iterable", "Mapping"):  # foolbox 2 predates Python 3.10, which moved them to collections.abc
        monkeypatch.setattr(collections, name, getattr(collections.abc, name), raising=False)
    foolbox = pytest.importorskip("foolbox")
    if not foolbox.__version__.startswith("2."):
        pytest.skip(f"foolbox {foolbox.__version__} installed; the oracle is foolbox 2.4")
    net, (x, y), eps = Wave(), wave_images(), 0.1
    attack = foolbox.attacks.FGSM(foolbox.models.PyTorchModel(net, bounds=(0, 1), num_classes=2))
    theirs = torch.from_numpy(attack(x.numpy(), y.numpy(), epsilons=[eps], max_epsilon=0)).float()
    ours = fgsm_any(net, x, y, eps)
    none = torch.isnan(theirs).flatten(1).all(1)
    assert none.tolist() == [False, False, False, False, True, False]
    assert torch.allclose(ours[~none], theirs[~none], atol=1e-6)
    assert (net(ours[none]).argmax(1) == y[none]).all()


def test_a_batch_of_one_gives_the_same_accuracy(trained_linear):
    model, x, y = trained_linear
    data, cfg = TensorDataset(x[:6], y[:6]), config(1, (0.5,), (0.25,), 2)
    for attack in ("fgsm", "fgsm-any", "pgd"):
        rows = [robustness({"m": (model, cfg)}, data, attack, [0, 0.1, 0.3], steps=2, batch_size=b, device="cpu")
                for b in (1, 6)]
        assert [r["correct"] for r in rows[0]] == [r["correct"] for r in rows[1]]
        assert rows[0][0]["images"] == 6 and rows[0][0]["correct"] == 6 and rows[0][-1]["correct"] < 6
    assert model.training is False


def test_bf16_gives_nearly_fp32s_fgsm_accuracy_and_is_really_used(trained_linear):
    model, x, y = trained_linear
    cfg, data = config(1, (0.5,), (0.25,), 2), TensorDataset(x, y)
    eps = [0, 0.02, 0.05, 0.1, 0.2]
    dtypes = []  # the classifier's output dtype in each forward pass: bf16 only if autocast ran it
    handle = model[1].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    try:
        fp32 = accuracies(robustness({"m": (model, cfg)}, data, "fgsm", eps, device="cpu"), "m")
        assert set(dtypes) == {torch.float32}
        dtypes.clear()
        bf16 = accuracies(robustness({"m": (model, cfg)}, data, "fgsm", eps, device="cpu", amp="bf16"), "m")
        assert set(dtypes) == {torch.bfloat16}
    finally:
        handle.remove()
    assert fp32[-1] < 0.5  # the attack bites, so the comparison means something
    # bf16 rounds the logits and the gradient's magnitude, rarely its sign: a few images of 200 at most
    assert all(abs(a - b) <= 0.02 for a, b in zip(fp32, bf16)), (fp32, bf16)


def test_bf16_keeps_the_images_and_their_gradient_float32(trained_linear, monkeypatch):
    import hcgnet.analysis.attack as attack

    model, x, y = trained_linear
    seen = {"images": set(), "gradients": set(), "steps": []}
    gradient, run = attack._input_gradient, attack.run_attack

    def spy_gradient(net, images, labels):
        g = gradient(net, images, labels)
        seen["images"].add(images.dtype)
        seen["gradients"].add(g.dtype)
        return g

    def spy_run(name, net, images, labels, eps, **kwargs):
        adv = run(name, net, images, labels, eps, **kwargs)
        inside = (images > eps) & (images < 1 - eps)
        seen["steps"].append(((adv - images).abs()[inside] - eps).abs().max().item())
        seen["images"].add(adv.dtype)
        return adv

    monkeypatch.setattr(attack, "_input_gradient", spy_gradient)
    monkeypatch.setattr(attack, "run_attack", spy_run)
    robustness({"m": (model, config(1, (0.5,), (0.25,), 2))}, TensorDataset(x, y), "fgsm", [0.001], device="cpu",
               amp="bf16")
    assert seen["images"] == seen["gradients"] == {torch.float32}
    # exactly one step of 0.001 on every pixel away from the bounds: a bf16 image (8 bits of mantissa) could not
    # hold x + 0.001 for x near 0.5, where its spacing is 0.002
    assert seen["steps"] and max(seen["steps"]) < 1e-6


def test_fp16_still_attacks_images_the_model_is_sure_of():
    # A model trained until its loss is 0 in float32: the loss gradient at the logits (1e-20 and less) would
    # underflow to 0 in an fp16 backward pass, and FGSM would leave every image as it is. (fp16 autocast is
    # refused on the CPU by the command, for speed; the arithmetic is the same as on a GPU.)
    from hcgnet.analysis.attack import Normalised

    model, x, y = train_linear(300)
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(model((x - 0.5) / 0.25), y)) < 1e-7  # that sure
    fp32 = fgsm(Normalised(model, (0.5,), (0.25,)), x, y, 0.05)
    fp16 = fgsm(Normalised(model, (0.5,), (0.25,), torch.float16), x, y, 0.05)
    assert not torch.equal(fp16, x)
    assert torch.equal(fp16, fp32)  # the same signs, so the same images


def test_library_refusals():
    model, data = tiny_cnn(), TensorDataset(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    for kwargs, words in ((dict(attack="cw", eps_list=[0.1]), "unknown attack"),
                          (dict(attack="fgsm", eps_list=[1.5]), "between 0 and 1"),
                          (dict(attack="fgsm", eps_list=[float("nan")]), "between 0 and 1"),
                          (dict(attack="pgd", eps_list=[0.1], steps=0), "--steps"),
                          (dict(attack="pgd", eps_list=[0.1], step_size=-1.0), "--step-size"),
                          (dict(attack="fgsm", eps_list=[0.1], amp="fp16", device="cpu"), "needs a GPU"),
                          (dict(attack="fgsm", eps_list=[0.1], amp="fp8"), "unknown --amp"),
                          (dict(attack="fgsm", eps_list=[0.1], workers=-1), "--workers")):
        with pytest.raises(HCGNetError, match=words):
            robustness({"m": (model, config())}, data, **kwargs)


# ------------------------------------------------------------------------------------------------ checkpoints


def train(base, *argv):
    code = main(["train", *map(str, argv), "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8",
                 "--workers", "0", "--max-test-images", "4"])
    assert code == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _one_thread):
    base = tmp_path_factory.mktemp("attack")
    folder = make_image_folder(base / "images", classes=3, per_class=8, size=(16, 16))
    data = f"imagefolder:{folder}"
    common = ["--data", data, "--image-size", "16", "--val-size", "3", "--test-size", "6"]
    train(base, "--model", SPEC, *common, "--output", base / "hcgnet")
    train(base, "--model", "test_resnet", *common, "--output", base / "resnet")  # a timm baseline
    return {"base": base, "data": data, "folder": folder,
            "hcgnet": base / "hcgnet" / "best.safetensors", "resnet": base / "resnet" / "best.safetensors"}


def wilson_95(k, n):
    """The Wilson score interval from its formula (Wilson 1927; Newcombe 1998, method 3), z from the stdlib."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre, half = p + z ** 2 / (2 * n), z * (p * (1 - p) / n + z ** 2 / (4 * n ** 2)) ** 0.5
    return (centre - half) / (1 + z ** 2 / n), (centre + half) / (1 + z ** 2 / n)


def test_wilson_interval_is_newcombes_table():
    from hcgnet.analysis.attack import wilson

    # Newcombe (1998), Stat. Med. 17:857, Table II, method 3 (score interval without continuity correction)
    for (k, n), (low, high) in (((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)),
                                ((0, 20), (0.0, 0.1611)), ((1, 29), (0.0061, 0.1718))):
        assert wilson(k, n) == pytest.approx((low, high), abs=6e-5)
        assert wilson(k, n) == pytest.approx(wilson_95(k, n), abs=1e-12)
    assert wilson(20, 20) == pytest.approx((1 - 0.1611, 1.0), abs=6e-5)
    assert wilson(0, 0) == (None, None)


def test_eps_are_sorted_and_an_eps_given_twice_is_refused():
    model, data = tiny_cnn(), TensorDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    rows = robustness({"m": (model, config())}, data, "fgsm", [0.05, 0, 0.01])
    assert [r["eps"] for r in rows] == [0, 0.01, 0.05]
    with pytest.raises(HCGNetError, match=r"--eps lists 0.05 more than once; .*e.g. 0.01,0.05"):
        robustness({"m": (model, config())}, data, "fgsm", [0.05, 0.01, 0.05])


def test_attack_command_compares_hcgnet_and_a_timm_baseline(capsys, runs):
    out = runs["base"] / "out"
    # eps out of order: the console, the files and the plot all give them in increasing order
    code, text, err = cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--checkpoint", runs["resnet"],
                          "--data", runs["data"], "--eps", "0.1,0,0.01", "--output", out)
    assert code == 0, err
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("eps"))
    assert lines[header].split()[1:] == [SPEC, "test_resnet"]
    assert [line.split()[0] for line in lines[header + 1:header + 4]] == ["clean", "0.01", "0.1"]
    with open(out / "robustness.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["eps"], r["model"]) for r in rows] == [(e, m) for e in ("0.0", "0.01", "0.1")
                                                      for m in (SPEC, "test_resnet")]
    assert all(int(r["images"]) == 6 for r in rows)
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["eps"] == [0, 0.01, 0.1] and [r["eps"] for r in saved["rows"]] == [0, 0, 0.01, 0.01, 0.1, 0.1]
    # each accuracy's 95% Wilson interval, the same in the CSV, the JSON and the console
    assert "Wilson" in saved["interval"] and "95%" in saved["interval"]
    for r, s in zip(rows, saved["rows"]):
        low, high = wilson_95(int(r["correct"]), int(r["images"]))
        assert (float(r["ci95_low"]), float(r["ci95_high"])) == pytest.approx((low, high), abs=1e-6)
        assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((low, high), abs=1e-12)
        row_line = lines[header + 1 + [0, 0.01, 0.1].index(s["eps"])]
        assert f"{100 * s['accuracy']:.2f}% [{100 * low:.1f}, {100 * high:.1f}]" in row_line
    assert "95% Wilson" in text
    assert saved["attack"] == "fgsm-any" and saved["split"] == "test" and saved["models"] == [SPEC, "test_resnet"]
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # eps 0 is hcgnet eval's top-1 on the same split, for both models
    for key, model in (("hcgnet", SPEC), ("resnet", "test_resnet")):
        clean = next(r for r in saved["rows"] if r["eps"] == 0 and r["model"] == model)
        ev = evaluate_checkpoint(str(runs[key]), runs["data"], workers=0, progress=False, log=lambda m: None)
        assert ev["count"] == clean["images"]
        assert clean["accuracy"] == pytest.approx(ev["top1"], abs=1e-12)


def test_attack_pgd_and_limit_on_a_folder_scored_whole(capsys, runs):
    other = make_image_folder(runs["base"] / "other", classes=3, per_class=3, size=(16, 16), seed=7)
    out = runs["base"] / "pgd"
    code, text, err = cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--data", f"imagefolder:{other}",
                          "--attack", "pgd", "--steps", "2", "--random-start", "--eps", "0,0.05", "--limit", "5",
                          "--batch-size", "1", "--output", out)
    assert code == 0, err
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["split"] == "all" and saved["steps"] == 2 and saved["random_start"] is True
    assert {r["images"] for r in saved["rows"]} == {5}
    # what was scored, of how many, and from which file, as a reader of the file needs it
    assert saved["limit"] == 5 and saved["images_available"] == {SPEC: 9}
    assert "(all, the first 5 of 9 images)" in text and "PGD L-inf, 2 steps, step 2.5 eps/steps, random start" in text
    recorded = saved["provenance"]["checkpoints"]
    assert recorded == [{"path": str(Path(runs["hcgnet"]).resolve()),
                         "sha256": hashlib.sha256(Path(runs["hcgnet"]).read_bytes()).hexdigest()}]
    assert saved["provenance"]["torch"] == torch.__version__ and saved["provenance"]["device"] == "cpu"
    # eps 0 is eval's top-1 on the same first 5 images (eval --limit)
    ev = evaluate_checkpoint(str(runs["hcgnet"]), f"imagefolder:{other}", workers=0, progress=False,
                             log=lambda m: None, limit=5)
    clean = next(r for r in saved["rows"] if r["eps"] == 0)
    assert (ev["count"], ev["images_available"], ev["limit"]) == (5, 9, 5)
    assert clean["accuracy"] == pytest.approx(ev["top1"], abs=1e-12)


def test_attack_command_with_bf16_and_data_loading_workers(capsys, runs):
    out = runs["base"] / "bf16"
    code, text, err = cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--data", runs["data"], "--eps", "0,0.05",
                          "--amp", "bf16", "--workers", "1", "--batch-size", "1", "--output", out)
    assert code == 0, err
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["amp"] == "bf16" and {r["images"] for r in saved["rows"]} == {6}


def test_skip_bad_images_on_a_folder_with_a_truncated_jpeg(capsys, runs, tmp_path):
    from PIL import Image

    folder = make_image_folder(tmp_path / "shots", classes=3, per_class=2, size=(16, 16), seed=3)
    Image.open(folder / "class_0" / "000.png").convert("RGB").save(folder / "class_1" / "cut.jpg")
    data = (folder / "class_1" / "cut.jpg").read_bytes()
    (folder / "class_1" / "cut.jpg").write_bytes(data[:len(data) // 2])
    argv = ["attack", "--checkpoint", runs["hcgnet"], "--data", f"imagefolder:{folder}", "--eps", "0,0.01",
            "--workers", "0", "--output", tmp_path / "out"]
    line = one_line_error(*cli(capsys, *argv))  # the run did not skip bad images: neither does its attack
    assert "cut.jpg" in line and "--skip-bad-images" in line
    code, text, err = cli(capsys, *argv, "--skip-bad-images")
    assert code == 0, err
    assert "note: skipped 1 unreadable image (cut.jpg), as --skip-bad-images asks" in err.splitlines()
    saved = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert {r["images"] for r in saved["rows"]} == {6}  # the six readable ones


def write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root, train=40, test=20):
    """Fashion-MNIST's four raw files with a few images (class c: brightness 20 * c, plus noise)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % 10
        images = np.clip(labels[:, None, None] * 20 + rng.integers(0, 40, (n, 28, 28)), 0, 255)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 0x803)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 0x801)
    return root


def test_attack_a_one_channel_fashion_mnist_checkpoint(capsys, tmp_path, single_thread):
    data_dir = fake_fashion_mnist(tmp_path / "fm")
    train(tmp_path, "--model", SPEC, "--data", "fashion-mnist", "--data-dir", data_dir, "--val-size", "10",
          "--output", tmp_path / "run")
    ckpt = tmp_path / "run" / "best.safetensors"
    code, text, err = cli(capsys, "attack", "--checkpoint", ckpt, "--data", "fashion-mnist", "--data-dir", data_dir,
                          "--eps", "0,0.002", "--attack", "fgsm-any", "--output", tmp_path / "out")
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert {r["images"] for r in saved["rows"]} == {20}
    ev = evaluate_checkpoint(str(ckpt), "fashion-mnist", data_dir=str(data_dir), workers=0, progress=False,
                             log=lambda m: None)
    assert saved["rows"][0]["accuracy"] == pytest.approx(ev["top1"], abs=1e-12)


@pytest.mark.parametrize("argv, words", [
    (["--eps", "0,1.5"], "between 0 and 1"),
    (["--eps", "-0.1"], "between 0 and 1"),
    (["--eps", "0,abc"], "comma-separated"),
    (["--attack", "pgd", "--steps", "0"], "--steps must be a whole number of 1 or more, got 0"),
    (["--attack", "pgd", "--step-size", "0"], "--step-size must be above 0"),
    (["--attack", "cw"], "unknown attack 'cw'"),
    (["--limit", "0"], "--limit"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU; on the CPU use --amp bf16"),
    (["--workers", "-1"], "--workers must be 0 or more"),
    (["--device", "nonsense"], "is not a device"),
    (["--steps", "0"], "--steps must be a whole number of 1 or more"),          # with fgsm too, where it goes unused
    (["--batch-size", "abc"], "argument --batch-size: invalid int value: 'abc' (hcgnet attack --help"),
    (["--random-start"], "--random-start is PGD's (--attack pgd); fgsm-any takes one step of eps"),
    (["--steps", "5"], "--steps is PGD's (--attack pgd); fgsm-any takes one step of eps"),
    (["--attack", "fgsm", "--step-size", "0.1", "--random-start"], "--random-start and --step-size are PGD's"),
    (["--eps", "0.05,0.01,0.05"], "--eps lists 0.05 more than once; give each eps once"),
])
def test_bad_options_are_one_line(capsys, runs, argv, words):
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--data", runs["data"],
                               "--output", runs["base"] / "bad", *argv))
    assert words in line


def test_a_checkpoint_without_preprocessing_is_attacked_at_the_models_input_size(tmp_path):
    from pathlib import Path

    from hcgnet.analysis.attack import checkpoint_dataset
    from hcgnet.inference import load_model

    published = Path(__file__).resolve().parent / "fixtures" / "cifar_A1.official.pth.tar"
    folder = make_image_folder(tmp_path / "ten", classes=10, per_class=1, size=(48, 40))
    model, meta = load_model(str(published), "hcgnet_a1")
    dataset, config, split = checkpoint_dataset(str(published), model, meta, f"imagefolder:{folder}")
    assert dataset[0][0].shape == (3, 32, 32)  # the CIFAR stem's 32 px (pretrained_cfg), not the pictures' size
    assert 0 <= float(dataset[0][0].min()) and float(dataset[0][0].max()) <= 1  # pixels, for the attack


def test_a_checkpoint_for_another_class_count_is_one_line(capsys, runs, tmp_path):
    four = make_image_folder(tmp_path / "four", classes=4, per_class=2, size=(16, 16))
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--data", f"imagefolder:{four}",
                               "--output", tmp_path / "out"))
    assert "class" in line
    fm = fake_fashion_mnist(tmp_path / "fm", train=20, test=10)
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", runs["resnet"], "--data", "fashion-mnist",
                               "--data-dir", fm, "--output", tmp_path / "out"))
    assert "10 classes" in line and "3" in line


@pytest.mark.parametrize("command,verb", [("attack", "attack"), ("eval", "evaluate")])
def test_a_three_channel_checkpoint_on_one_channel_data_is_refused_as_eval_refuses_it(capsys, tmp_path, command, verb):
    """Fashion-MNIST's grayscale images would be converted to RGB for a CIFAR model without a word, and scored;
    eval and attack refuse them in the same words."""
    published = Path(__file__).resolve().parent / "fixtures" / "cifar_A1.official.pth.tar"
    fm = fake_fashion_mnist(tmp_path / "fm", train=20, test=10)
    line = one_line_error(*cli(capsys, command, "--checkpoint", published, "--model", "hcgnet_a1", "--data",
                               "fashion-mnist", "--data-dir", fm, "--limit", "5", "--output", tmp_path / "out"))
    assert line == (f"hcgnet: error: {published} takes 3-channel images but fashion-mnist gives 1-channel ones; "
                    f"{verb} it on the dataset it was trained for")
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_one_line(capsys, runs, tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--data", runs["data"],
                               "--output", tmp_path / "file"))
    assert "is a file; give a folder for robustness.csv" in line


def test_newcomers_mistakes_are_one_line(capsys, runs):
    # no --output: argparse's own report (usage lines, then the error) becomes one line too
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--data", runs["data"]))
    assert "required: --output" in line and "hcgnet attack --help" in line
    # the run's folder instead of its checkpoint: said so, with the file to pass, not "not found"
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", runs["base"] / "hcgnet", "--data", runs["data"],
                               "--output", runs["base"] / "bad"))
    assert f"is a folder, not a checkpoint file; e.g. --checkpoint {runs['hcgnet']}" in line
    # an empty folder as the data
    (runs["base"] / "empty").mkdir(exist_ok=True)
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--data",
                               f"imagefolder:{runs['base'] / 'empty'}", "--output", runs["base"] / "bad"))
    assert "no class sub-folders" in line
    assert not (runs["base"] / "bad").exists()


def test_without_data_the_checkpoints_own_data_is_attacked(capsys, runs, tmp_path):
    code, text, err = cli(capsys, "attack", "--checkpoint", runs["hcgnet"], "--checkpoint", runs["resnet"],
                          "--eps", "0,0.01", "--output", tmp_path / "out")
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert saved["data"] == runs["data"] and {r["images"] for r in saved["rows"]} == {6}   # each run's test split
    # checkpoints that record no data, or different data: one line saying to pass --data
    from safetensors.torch import load_file, safe_open

    with safe_open(runs["hcgnet"], "pt") as f:
        meta = dict(f.metadata())
    elsewhere = tmp_path / "elsewhere.safetensors"
    hcgnet.save_safetensors(load_file(runs["hcgnet"]), elsewhere, {**meta, "data": "cifar10"})
    unrecorded = tmp_path / "unrecorded.safetensors"
    hcgnet.save_safetensors(load_file(runs["hcgnet"]), unrecorded, {k: v for k, v in meta.items() if k != "data"})
    for checkpoints, needle in (([runs["hcgnet"], elsewhere], "the checkpoints were trained on different data "
                                                              f"(cifar10, {runs['data']}); pass --data"),
                                ([unrecorded], f"{unrecorded} does not record the data it was trained on; "
                                               "pass --data")):
        argv = [a for c in checkpoints for a in ("--checkpoint", c)]
        line = one_line_error(*cli(capsys, "attack", *argv, "--eps", "0", "--output", tmp_path / "refused"))
        assert needle in line
    assert not (tmp_path / "refused").exists()


def test_attack_refuses_to_replace_earlier_results_without_force(capsys, runs):
    out = runs["base"] / "twice"
    argv = ["attack", "--checkpoint", runs["hcgnet"], "--data", runs["data"], "--eps", "0,0.01", "--output", out]
    code, text, err = cli(capsys, *argv)
    assert code == 0, err
    assert f"wrote {out}/: robustness.csv, robustness.json, robustness.png" in text
    before = {n: (out / n).read_bytes() for n in ("robustness.csv", "robustness.json", "robustness.png")}
    line = one_line_error(*cli(capsys, *argv[:-4], "--eps", "0,0.05", "--output", out))
    assert "already holds robustness.csv, robustness.json, robustness.png" in line and "--force" in line
    assert {n: (out / n).read_bytes() for n in before} == before  # untouched
    code, text, err = cli(capsys, *argv[:-4], "--eps", "0,0.05", "--output", out, "--force")
    assert code == 0, err
    assert [r["eps"] for r in json.loads((out / "robustness.json").read_text())["rows"]] == [0, 0.05]


def test_labels_tell_apart_checkpoints_of_the_same_name():
    from hcgnet.analysis.attack import model_labels

    assert model_labels(["runs/a/best.safetensors", "runs/b/best.safetensors"], [None, None]) == ["a/best", "b/best"]
    assert model_labels(["x/run/best.pt", "y/run/best.pt", "z/last.pt"], [None, None, None]) == [
        "x/run/best", "y/run/best", "last"]
    assert model_labels(["a/best.pt", "b/best.pt"], ["hcgnet_a1", "hcgnet_a1"]) == [
        "hcgnet_a1 (a/best)", "hcgnet_a1 (b/best)"]
    assert model_labels(["a/best.pt", "b/best.pt"], ["hcgnet_a1", "resnet18"]) == ["hcgnet_a1", "resnet18"]
    assert model_labels(["a/best.pt", "a/best.pt"], [None, None]) == ["best", "best #2"]


def test_heading_names_each_models_split_and_image_count():
    from hcgnet.analysis.attack import heading

    rows = [{"eps": 0.0, "model": "A", "images": 6}, {"eps": 0.0, "model": "B", "images": 9}]
    mixed = {"attack": "fgsm-any", "data": "imagefolder:x", "split": "all/test", "splits": {"A": "test", "B": "all"},
             "models": ["A", "B"], "rows": rows}
    assert "(A: test, 6 images; B: all, 9 images)" in heading(mixed)
    assert "the paper's measure" in heading(mixed)
    same = {**mixed, "splits": {"A": "test", "B": "test"}, "rows": [{**r, "images": 6} for r in rows]}
    assert "on imagefolder:x (test, 6 images):" in heading(same)
    assert "not the paper's measure" in heading({**same, "attack": "fgsm"})


# ------------------------------------------------------------------------------------------------ timm baselines


def test_create_model_falls_back_to_timm_and_reads_its_checkpoint(runs):
    import hcgnet

    model = hcgnet.create_model("test_resnet", checkpoint_path=str(runs["resnet"]))
    assert type(model).__name__ == "ResNet" and model.num_classes == 3
    assert model.pretrained_cfg["input_size"] == (3, 16, 16)  # the run's own preprocessing
    with pytest.raises(HCGNetError, match="unknown model 'resnet_nope'.*timm model name"):
        hcgnet.create_model("resnet_nope")
    with pytest.raises(HCGNetError, match="does not download"):
        hcgnet.create_model("resnet18", pretrained=True)

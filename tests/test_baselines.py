"""The paper's CIFAR neighbours (DenseNet-BC, He et al.'s CIFAR ResNets) through hcgnet's names, trainer and CLI.

Every expected count is this file's own arithmetic from the papers' descriptions, and every forward is compared
with a functional oracle written here from the same descriptions (not from the modules under test).
"""
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hcgnet
from conftest import cli, make_image_folder
from hcgnet.errors import CheckpointError, ModelSpecError
from hcgnet.models.baselines import CifarResNet, DenseNetBC

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10 training-set statistics


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def built(name, **kwargs):
    with torch.device("meta"):  # shapes only
        return hcgnet.create_model(name, **kwargs)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ hand arithmetic


def densenet_bc_plan(depth, k, in_chans=3, compression=0.5):
    """[(conv weights, output pixels as a fraction of the input's), ...], BN channels, final width of DenseNet-BC
    for CIFAR as the DenseNet paper describes it (section 3 and 4.2)."""
    layers = (depth - 4) // 6
    convs, bn = [(in_chans * 2 * k * 9, 1)], []  # 3x3 stem convolution of 2k channels, nothing else
    c, scale = 2 * k, 1
    for block in range(3):
        if block:  # transition: BN-ReLU-1x1 conv (floor(c * compression)) at this resolution, then a 2x2 pool
            out = int(c * compression)
            bn.append(c)
            convs.append((c * out, scale))
            c, scale = out, scale / 4
        for _ in range(layers):  # BN-ReLU-1x1 conv of 4k, BN-ReLU-3x3 conv of k
            bn += [c, 4 * k]
            convs += [(c * 4 * k, scale), (4 * k * 9 * k, scale)]
            c += k
    bn.append(c)
    return convs, bn, c


def densenet_bc_params(depth, k, classes=10, in_chans=3):
    convs, bn, width = densenet_bc_plan(depth, k, in_chans)
    return sum(w for w, _ in convs) + 2 * sum(bn) + width * classes + classes


def densenet_bc_macs(depth, k, side=32, classes=10):
    convs, _, width = densenet_bc_plan(depth, k)
    return int(sum(w * side * side * s for w, s in convs)) + width * classes


def cifar_resnet_params(depth, classes=10, widths=(16, 32, 64)):
    """He et al. 2016 section 4.2: 3x3 conv + BN, 3 stages of n basic blocks (two 3x3 conv + BN each), option A
    shortcuts (no parameters), linear."""
    n = (depth - 2) // 6
    total, c = 9 * 3 * widths[0] + 2 * widths[0], widths[0]
    for w in widths:
        for _ in range(n):
            total += 9 * c * w + 2 * w + 9 * w * w + 2 * w
            c = w
    return total + c * classes + classes


def test_the_hand_arithmetic_gives_the_usual_densenet_bc_100_integer():
    # The oracle itself against the integer the usual implementations print for DenseNet-BC-100, k=12, CIFAR-10.
    assert densenet_bc_params(100, 12) == 769_162


@pytest.mark.parametrize("name, depth, k, paper", [
    ("densenet_bc_100_k12", 100, 12, 0.8e6), ("densenet_bc_250_k24", 250, 24, 15.3e6),
    ("densenet_bc_190_k40", 190, 40, 25.6e6),
])
def test_densenet_bc_parameters_match_the_hand_count_and_the_densenet_paper(name, depth, k, paper):
    for classes in (10, 100):
        assert n_params(built(name, num_classes=classes)) == densenet_bc_params(depth, k, classes)
    assert round(densenet_bc_params(depth, k) / 1e6, 1) == paper / 1e6  # the DenseNet paper's Table 2, CIFAR-10


@pytest.mark.parametrize("depth, paper", [(20, "0.27"), (32, "0.46"), (44, "0.66"), (56, "0.85"), (110, "1.7")])
def test_cifar_resnet_parameters_match_the_hand_count_and_the_resnet_paper(depth, paper):
    got = n_params(built(f"resnet{depth}_cifar", num_classes=10))
    assert got == cifar_resnet_params(depth)
    assert f"{got / 1e6:.{len(paper) - 2}f}" == paper  # the ResNet paper's Table 6, to its digits


def test_a_fair_resnet_of_a1_size_is_resnet56_cifar_not_a_timm_name():
    # What the README says: timm's smallest ResNets are several times A1 (1.1M on CIFAR-10), ResNet-56 is closest.
    a1 = n_params(built("hcgnet_a1", num_classes=10))
    assert 1.0e6 < a1 < 1.2e6
    for name in ("resnet10t", "resnet18"):
        assert n_params(built(name, num_classes=10)) > 4 * a1
    sizes = {d: cifar_resnet_params(d) for d in (20, 32, 44, 56, 110)}
    assert min(sizes, key=lambda d: abs(np.log(sizes[d] / a1))) == 56


# ------------------------------------------------------------------------------------------------ forward oracles


def bn(sd, prefix, x):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=1e-5)


def densenet_bc_oracle(sd, x, layers, k):
    h = F.conv2d(x, sd["stem.conv0.weight"], padding=1)
    assert sd["stem.conv0.weight"].shape[:1] == (2 * k,)
    for s in range(3):
        if s:
            t = f"stages.{s}.transition"
            assert sd[f"{t}.conv.weight"].shape[:2] == (h.shape[1] // 2, h.shape[1])  # compression 0.5
            h = F.avg_pool2d(F.conv2d(F.relu(bn(sd, f"{t}.norm", h)), sd[f"{t}.conv.weight"]), 2)
        for i in range(1, layers + 1):
            p = f"stages.{s}.denseblock.denselayer{i}"
            assert sd[f"{p}.conv1.weight"].shape[:2] == (4 * k, h.shape[1])  # bottleneck 4k
            y = F.conv2d(F.relu(bn(sd, f"{p}.norm1", h)), sd[f"{p}.conv1.weight"])
            y = F.conv2d(F.relu(bn(sd, f"{p}.norm2", y)), sd[f"{p}.conv2.weight"], padding=1)
            h = torch.cat([h, y], 1)
    h = F.relu(bn(sd, "final.norm", h)).mean((2, 3))
    return F.linear(h, sd["head.fc.weight"], sd["head.fc.bias"])


def cifar_resnet_oracle(sd, x, n):
    h = F.relu(bn(sd, "stem.bn", F.conv2d(x, sd["stem.conv.weight"], padding=1)))
    for s in range(3):
        for b in range(n):
            p, stride = f"stages.{s}.{b}", 2 if s and not b else 1
            y = F.relu(bn(sd, f"{p}.bn1", F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1)))
            y = bn(sd, f"{p}.bn2", F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1))
            shortcut = h[:, :, ::stride, ::stride]  # option A: kept pixels, zeros for the new channels
            shortcut = torch.cat([shortcut, shortcut.new_zeros(
                shortcut.shape[0], y.shape[1] - shortcut.shape[1], *shortcut.shape[2:])], 1)
            h = F.relu(y + shortcut)
    return F.linear(h.mean((2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


def randomised(model, seed):
    """Random weights and BN statistics, so that no rule hides behind an initialisation of ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():  # norms' scales, shifts, means and (positive) variances; weights around 0
                r = torch.rand(t.shape, generator=g)
                t.copy_(0.5 + r if t.dim() == 1 else (r - 0.5) * 0.6)
    return model.eval()


@pytest.mark.parametrize("depth, k, in_chans, side", [(10, 4, 3, 32), (16, 6, 1, 9), (22, 3, 2, 12)])
def test_densenet_bc_forward_matches_the_functional_oracle(depth, k, in_chans, side):
    model = randomised(DenseNetBC(depth=depth, growth_rate=k, num_classes=5, in_chans=in_chans), depth)
    x = torch.randn(2, in_chans, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), densenet_bc_oracle(model.state_dict(), x, (depth - 4) // 6, k))
    assert not [key for key in model.state_dict() if key.startswith("stem.") and key != "stem.conv0.weight"]


@pytest.mark.parametrize("depth, in_chans, side", [(8, 3, 32), (14, 1, 9), (20, 2, 12)])
def test_cifar_resnet_forward_matches_the_functional_oracle(depth, in_chans, side):
    model = randomised(CifarResNet(depth=depth, num_classes=4, in_chans=in_chans), depth)
    x = torch.randn(2, in_chans, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), cifar_resnet_oracle(model.state_dict(), x, (depth - 2) // 6))
    # option A has no parameters: only the two convolutions and norms of each block
    assert not [key for key in model.state_dict() if "downsample" in key]


@pytest.mark.parametrize("name", ["densenet_bc_100_k12", "resnet56_cifar"])
def test_initialisation_is_the_papers_code_he_normal_over_fan_out(name):
    # Both reference codes (DenseNet's Lua, fb.resnet.torch): normal(0, sqrt(2 / (kW * kH * nOutputPlane))).
    torch.manual_seed(0)
    model = hcgnet.create_model(name)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 4000]
    assert len(convs) > 10
    for conv in convs:
        k = conv.kernel_size[0]
        assert conv.weight.std().item() == pytest.approx((2 / (k * k * conv.out_channels)) ** 0.5, rel=0.1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    assert not model.get_classifier().bias.any()


# -------------------------------------------------------------------------------------------- names, shapes, configs


@pytest.mark.parametrize("name, widths", [("densenet_bc_100_k12", (216, 300, 342)), ("resnet56_cifar", (16, 32, 64))])
def test_every_way_of_building_gives_the_same_network_and_shapes(name, widths):
    import timm

    x = torch.randn(2, 3, 32, 32)
    ours = hcgnet.create_model(name, num_classes=7).eval()
    theirs = timm.create_model(name, num_classes=7).eval()
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x))
        assert ours(x).shape == (2, 7)
        assert ours.forward_head(ours.forward_features(x), pre_logits=True).shape == (2, widths[-1])
        features = hcgnet.create_model(name, features_only=True)(x)
    assert [tuple(f.shape) for f in features] == [(2, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate(widths)]
    grey = hcgnet.create_model(name, num_classes=3, in_chans=1)
    assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert grey.pretrained_cfg["input_size"] == (1, 32, 32)
    ours.reset_classifier(4)
    assert ours(x).shape == (2, 4)


@pytest.mark.parametrize("name", ["densenet_bc_100_k12", "resnet20_cifar"])
def test_the_data_defaults_resolve_from_the_model_to_cifar_preprocessing(name):
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=built(name))
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx(CIFAR_MEAN) and cfg["std"] == pytest.approx(CIFAR_STD)


def test_memory_efficient_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = DenseNetBC(depth=16, growth_rate=4, num_classes=3)
    saving = hcgnet.create_model("densenet_bc_100_k12", depth=16, growth_rate=4, num_classes=3,
                                 memory_efficient=True)
    saving.load_state_dict(plain.state_dict())
    assert all(layer.memory_efficient for layer in saving.modules() if hasattr(layer, "memory_efficient"))
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for model in (plain, saving):
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


def test_drop_rate_is_dropout_before_the_classifier_and_block_drop_rate_after_each_dense_layer():
    torch.manual_seed(0)
    model = hcgnet.create_model("densenet_bc_100_k12", depth=10, growth_rate=4, drop_rate=0.5, block_drop_rate=0.25)
    assert [m.drop_rate for m in model.modules() if type(m).__name__ == "_DenseLayer"] == [0.25] * 3
    features = torch.rand(64, model.num_features, 2, 2) + 0.1
    pooled = model.train().forward_head(features, pre_logits=True)
    assert 0.3 < (pooled == 0).float().mean().item() < 0.7  # half the pooled features dropped, the rest doubled
    kept = pooled != 0
    torch.testing.assert_close(pooled[kept], 2 * features.mean((2, 3))[kept])
    torch.testing.assert_close(model.eval().forward_head(features, pre_logits=True), features.mean((2, 3)))
    resnet = hcgnet.create_model("resnet20_cifar", drop_rate=0.5).train()
    assert (resnet.forward_head(torch.rand(64, 64, 2, 2) + 0.1, pre_logits=True) == 0).any()


@pytest.mark.parametrize("make, message", [
    (lambda: hcgnet.create_model("densenet_bc_100_k12", depth=99), "6n + 4"),
    (lambda: hcgnet.create_model("resnet20_cifar", depth=21), "6n + 2"),
    (lambda: hcgnet.create_model("resnet20_cifar", in_chans=0), "in_chans"),
    (lambda: hcgnet.create_model("densenet_bc_100_k12", features_only=True, out_indices=(3,)), "out_indices"),
    (lambda: hcgnet.create_model("densenet_bc_100_k12", pretrained=True), "checkpoint_path"),
])
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises((ModelSpecError, CheckpointError)) as e:
        make()
    assert message in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ CLI


def test_info_shows_parameters_and_multiply_adds(capsys):
    code, out, err = cli(capsys, "info", "--json", "densenet_bc_100_k12", "resnet20_cifar", "hcgnet_a1")
    assert code == 0, err
    rows = {r["model"]: r for r in json.loads(out)}
    dense, res = rows["densenet_bc_100_k12"], rows["resnet20_cifar"]
    assert (dense["params"], dense["paper_params"], dense["input"]) == (769_162, "0.8M", "3x32x32")
    assert dense["gmacs"] * 1e9 == pytest.approx(densenet_bc_macs(100, 12), rel=1e-9)
    assert (res["params"], res["paper_params"]) == (cifar_resnet_params(20), "0.27M")
    code, out, err = cli(capsys, "info", "densenet_bc_100_k12", "--size", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--size 4" in err
    # --model-kwargs count the network they build, and the paper's figures are not shown beside it
    code, out, err = cli(capsys, "info", "--json", "densenet_bc_100_k12", "--model-kwargs", '{"depth": 22}')
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["params"], row["paper_params"]) == (densenet_bc_params(22, 12), None)
    assert "depth=22" in row["spec"]


def write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root, n=20):
    """Fashion-MNIST's four raw files with a few 28x28 grey images."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        labels = np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), 0x803)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 0x801)
    return root


def train(capsys, *argv):
    code, _, err = cli(capsys, "train", *argv, "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8",
                       "--workers", "0")
    assert code == 0, err


def test_train_then_eval_rebuilds_the_same_densenet_bc(capsys, tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=8, size=(16, 16))
    data = f"imagefolder:{folder}"
    train(capsys, "--model", "densenet_bc_100_k12", "--data", data, "--image-size", "16", "--val-size", "3",
          "--test-size", "6", "--output", tmp_path / "run")
    ckpt = tmp_path / "run" / "best.safetensors"
    from safetensors.torch import load_file

    saved = load_file(ckpt)
    model = hcgnet.create_model("densenet_bc_100_k12", checkpoint_path=str(ckpt))
    assert isinstance(model, DenseNetBC) and model.num_classes == 3
    assert n_params(model) == densenet_bc_params(100, 12, classes=3)
    assert model.pretrained_cfg["input_size"] == (3, 16, 16)  # the run's own preprocessing
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    code, out, err = cli(capsys, "eval", "--checkpoint", ckpt, "--data", data, "--workers", "0", "--json")
    assert code == 0, err
    ev = json.loads(out)
    assert (ev["count"], ev["top1"]) == (results["test_images"], pytest.approx(results["test_top1"]))


def test_a_run_with_model_kwargs_is_rebuilt_with_them(capsys, tmp_path):
    """A baseline trained at another depth and growth rate (as ablation grids do) is rebuilt as trained: its
    checkpoint records the arguments, and eval scores it without being told them."""
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=8, size=(16, 16))
    data = f"imagefolder:{folder}"
    train(capsys, "--model", "densenet_bc_100_k12", "--model-kwargs", '{"depth": 22, "growth_rate": 4}', "--data",
          data, "--image-size", "16", "--val-size", "3", "--test-size", "6", "--output", tmp_path / "run")
    ckpt = tmp_path / "run" / "best.safetensors"
    model = hcgnet.create_model("densenet_bc_100_k12", checkpoint_path=str(ckpt))
    assert n_params(model) == densenet_bc_params(22, 4, classes=3)
    code, out, err = cli(capsys, "eval", "--checkpoint", ckpt, "--data", data, "--workers", "0", "--json")
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert json.loads(out)["top1"] == pytest.approx(results["test_top1"])


def test_train_a_one_channel_fashion_mnist_densenet_bc(capsys, tmp_path):
    data_dir = fake_fashion_mnist(tmp_path / "fm")
    train(capsys, "--model", "densenet_bc_100_k12", "--data", "fashion-mnist", "--data-dir", data_dir, "--val-size",
          "4", "--output", tmp_path / "run", "--max-test-images", "4")
    model = hcgnet.create_model("densenet_bc_100_k12", checkpoint_path=str(tmp_path / "run" / "best.safetensors"))
    assert model.in_chans == 1 and model.stem.conv0.weight.shape == (24, 1, 3, 3) and model.num_classes == 10
    assert n_params(model) == densenet_bc_params(100, 12, in_chans=1)


@pytest.mark.parametrize("name,message", [
    ("resnet56_cifar", "no pretrained weights exist for resnet56_cifar; train them (hcgnet train --model "
                       "resnet56_cifar) and pass checkpoint_path="),
    ("densenet_bc_100_k12", "no pretrained weights exist for densenet_bc_100_k12"),
    ("resnet18", "hcgnet does not download timm's weights for resnet18; pass checkpoint_path="),
])
def test_pretrained_baselines_say_whether_weights_exist_at_all(name, message):
    """The CIFAR baselines have no published weights (timm: 'No pretrained weights exist'); timm's own models
    have weights that hcgnet does not download."""
    with pytest.raises(CheckpointError) as e:
        hcgnet.create_model(name, pretrained=True)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_an_hcgnet_switch_given_to_a_baseline_is_one_line_naming_it():
    """The baselines are hcgnet's own (registered with timm): the refusal says the network is not an HCGNet,
    not that it is "timm's"."""
    with pytest.raises(ModelSpecError) as e:
        hcgnet.create_model("densenet_bc_100_k12", forget_gate=False)
    assert str(e.value).startswith("densenet_bc_100_k12 is not an HCGNet and cannot be built with these settings: ")
    assert "forget_gate" in str(e.value)

"""Checkpoints: the published format (CIFAR and ImageNet naming), hcgnet's own, safetensors, and the
errors for every file that cannot be used.

The reference material (published-format fixture, its logits, the published key lists) is carried in
``tests/fixtures/``, so a clone with nothing beside it runs these tests.
"""
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors import safe_open

import hcgnet
from hcgnet import CheckpointError
from hcgnet.models import checkpoints as ckpt_module
from hcgnet.models.checkpoints import published_to_hcgnet_key, read_state_dict, save_safetensors

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "cifar_A1.official.pth.tar"
FIXTURE_IO = FIXTURES / "cifar_A1.io.pt"
OFFICIAL_KEYS = FIXTURES / "official-keys"

# official-keys file -> (hcgnet variant, class count of that file)
PUBLISHED = {
    "HCGNet_A1": ("hcgnet_a1", 10),
    "HCGNet_A2": ("hcgnet_a2", 10),
    "HCGNet_A3": ("hcgnet_a3", 100),
    "HCGNet_B": ("hcgnet_b", 1000),
    "HCGNet_C": ("hcgnet_c", 1000),
}

pytestmark = [
    # torch warns when the weights-only unpickler meets a protocol other than 2 (plain pickle, random bytes)
    pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),
]


pytestmark = pytest.mark.usefixtures("single_thread")


# helpers --------------------------------------------------------------------------------------


def read_official_keys(stem: str) -> Dict[str, tuple]:
    """``key -> (shape, dtype)`` from ``official-keys/<stem>.keys.txt`` (keys without ``module.``)."""
    out = {}
    for line in (OFFICIAL_KEYS / f"{stem}.keys.txt").read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        out[key] = (shape, getattr(torch, dtype.split(".")[-1]))
    return out


def synthesize_published(stem: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A published-format state dict (``module.`` prefixed keys) with random values of the listed shapes."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (shape, dtype) in read_official_keys(stem).items():
        if dtype.is_floating_point:
            value = torch.randn(shape, generator=g, dtype=dtype)
        else:
            value = torch.randint(0, 1000, shape, generator=g, dtype=dtype)
        sd["module." + key] = value
    return sd


def save_published(sd: Dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"net": sd, "acc": 12.5, "epoch": 3}, path)
    return path


def create(variant: str, num_classes: int):
    return hcgnet.create_model(variant, num_classes=num_classes)


def assert_state_dicts_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def io():
    return torch.load(FIXTURE_IO, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def a1_loaded():
    """HCGNet-A1 (10 classes) holding the fixture's weights, in eval mode."""
    model = hcgnet.create_model("hcgnet_a1", num_classes=10)
    hcgnet.load_checkpoint(model, FIXTURE)
    return model.eval()


@pytest.fixture(scope="module")
def published_b(tmp_path_factory):
    """A synthesized published HCGNet-B checkpoint file and its state dict."""
    sd = synthesize_published("HCGNet_B", seed=7)
    path = save_published(sd, tmp_path_factory.mktemp("published_b") / "HCGNet_B_best.pth.tar")
    return path, sd


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# 1. the published fixture gives the published logits ------------------------------------------


def test_fixture_checkpoint_gives_published_logits(io, a1_loaded):
    y = logits(a1_loaded, io["x"])
    assert y.shape == io["y"].shape == (4, 10)
    assert (y - io["y"]).abs().max().item() < 1e-4


def test_load_checkpoint_returns_metadata_saying_published():
    model = hcgnet.create_model("hcgnet_a1", num_classes=10)
    metadata = hcgnet.load_checkpoint(model, FIXTURE)
    assert metadata.get("source") == "published"


def test_fixture_loaded_weights_differ_from_fresh_init(a1_loaded):
    # guards the logits test against a loader that silently leaves the initialisation in place
    fresh = hcgnet.create_model("hcgnet_a1", num_classes=10).state_dict()
    loaded = a1_loaded.state_dict()
    differing = [k for k in fresh if fresh[k].is_floating_point() and not torch.equal(fresh[k], loaded[k])]
    assert len(differing) > 0.9 * sum(v.is_floating_point() for v in fresh.values())


def test_create_model_with_checkpoint_path_infers_classes(io):
    model = hcgnet.create_model("hcgnet_a1", checkpoint_path=str(FIXTURE))
    assert model.num_classes == 10
    assert model.classifier.out_features == 10
    y = logits(model, io["x"])
    assert (y - io["y"]).abs().max().item() < 1e-4


def test_create_model_with_checkpoint_path_accepts_the_spec(io):
    model = hcgnet.create_model("HCGNet-(8,8,8)-(k=12,24,36)", checkpoint_path=str(FIXTURE))
    assert (logits(model, io["x"]) - io["y"]).abs().max().item() < 1e-4


# 2. every published variant's naming maps onto ours ------------------------------------------


@pytest.mark.parametrize("stem", list(PUBLISHED))
def test_published_key_mapping_is_a_bijection_onto_model_keys(stem):
    variant, classes = PUBLISHED[stem]
    official = read_official_keys(stem)
    mapped = {key: published_to_hcgnet_key(key) for key in official}
    unmapped = [k for k, v in mapped.items() if v is None]
    assert unmapped == []
    assert len(set(mapped.values())) == len(mapped), "two published keys map to the same hcgnet key"
    with torch.device("meta"):
        model = hcgnet.create_model(variant, num_classes=classes)
    expected = model.state_dict()
    assert set(mapped.values()) == set(expected)
    for key, (shape, dtype) in official.items():
        target = expected[mapped[key]]
        assert target.dtype == dtype, key
        if len(shape) == 4 and target.dim() == 2:  # the gates' FC layers, stored as 1x1 convs
            assert shape == (*target.shape, 1, 1), key
        else:
            assert shape == tuple(target.shape), key


@pytest.mark.parametrize("stem", list(PUBLISHED))
def test_synthesized_published_checkpoint_loads_every_tensor(stem, tmp_path):
    variant, classes = PUBLISHED[stem]
    sd = synthesize_published(stem, seed=list(PUBLISHED).index(stem))
    path = save_published(sd, tmp_path / f"{stem}_best.pth.tar")
    model = create(variant, classes)
    hcgnet.load_checkpoint(model, path)
    loaded = model.state_dict()
    seen = set()
    for key, value in sd.items():
        ours = published_to_hcgnet_key(key[len("module."):])
        seen.add(ours)
        target = loaded[ours]
        expected = value.flatten(1) if value.dim() == 4 and target.dim() == 2 else value
        assert target.dtype == expected.dtype, ours
        assert torch.equal(target, expected), ours
    assert seen == set(loaded)


def test_published_checkpoint_without_module_prefix_loads(tmp_path):
    sd = {k[len("module."):]: v for k, v in synthesize_published("HCGNet_A1", seed=3).items()}
    path = tmp_path / "no_prefix.pth"
    torch.save({"net": sd}, path)
    model = create("hcgnet_a1", 10)
    hcgnet.load_checkpoint(model, path)
    assert torch.equal(model.state_dict()["stem.conv0.weight"], sd["features.conv0.weight"])


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_state_dicts_of_compiled_and_wrapped_models_load(tmp_path, prefix):
    """torch.compile saves its model's keys under ``_orig_mod.``; wrapped in DataParallel/DDP before or after."""
    model = create("hcgnet_a1", 10)
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / "compiled.pth")
    again = create("hcgnet_a1", 10)
    hcgnet.load_checkpoint(again, tmp_path / "compiled.pth")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    built = hcgnet.create_model("hcgnet_a1", checkpoint_path=str(tmp_path / "compiled.pth"))
    assert torch.equal(built.stem.conv0.weight, model.stem.conv0.weight)


def test_published_key_mapping_examples():
    assert published_to_hcgnet_key("features.conv0.weight") == "stem.conv0.weight"
    assert published_to_hcgnet_key("features.norm5.running_var") == "norm.running_var"
    assert published_to_hcgnet_key("classifier.bias") == "classifier.bias"
    assert (published_to_hcgnet_key("features.HybridBlock2.SMG3.conv_5x5.conv.weight")
            == "stages.1.block.layers.2.excite.conv3x3_dilated.conv.weight")
    assert (published_to_hcgnet_key("features.hybridblock4.SMG8.fc2.weight")
            == "stages.3.block.layers.7.forget_gate.expand.weight")
    assert (published_to_hcgnet_key("features.Transition1.fcall.bias")
            == "stages.1.transition.update_gate.bottleneck.fc.bias")
    assert published_to_hcgnet_key("features.HybridBlock1.SMG1.nonsense.weight") is None
    assert published_to_hcgnet_key("head.weight") is None


# The ImageNet-format (HCGNet-B) names, written out by hand from official-keys/HCGNet_B.keys.txt and the
# module layout in hcgnet/models/hcgnet.py: published key, its shape there, our key, its shape here. The gates'
# FC layers are 1x1 convs there and Linear layers here. Not computed by the mapping code under test.
B_KEY_TABLE = [
    # stem: three conv-BN pairs (the first stride 2)
    ("features.conv0.weight", (32, 3, 3, 3), "stem.conv0.weight", (32, 3, 3, 3)),
    ("features.norm0.weight", (32,), "stem.norm0.weight", (32,)),
    ("features.norm0.running_mean", (32,), "stem.norm0.running_mean", (32,)),
    ("features.conv1.weight", (32, 32, 3, 3), "stem.conv1.weight", (32, 32, 3, 3)),
    ("features.norm1.weight", (32,), "stem.norm1.weight", (32,)),
    ("features.norm1.running_var", (32,), "stem.norm1.running_var", (32,)),
    ("features.conv2.weight", (64, 32, 3, 3), "stem.conv2.weight", (64, 32, 3, 3)),
    ("features.norm2.bias", (64,), "stem.norm2.bias", (64,)),
    ("features.norm2.num_batches_tracked", (), "stem.norm2.num_batches_tracked", ()),
    # first hybrid block, first SMG module: squeeze cell's pre-activation norm
    ("features.hybridblock1.SMG1.conv1_1x1.norm.weight", (64,),
     "stages.0.block.layers.0.squeeze.conv1x1.norm.weight", (64,)),
    # transitions: published transition i is our stages.i.transition
    ("features.transition1.conv1_1x1.conv.weight", (120, 160, 1, 1),
     "stages.1.transition.squeeze.conv1x1.conv.weight", (120, 160, 1, 1)),
    ("features.transition1.conv2_3x3.conv.weight", (80, 120, 3, 3),
     "stages.1.transition.squeeze.conv3x3.conv.weight", (80, 120, 3, 3)),
    ("features.transition1.conv_5x5.conv.weight", (80, 1, 3, 3),
     "stages.1.transition.excite.conv3x3_dilated.conv.weight", (80, 1, 3, 3)),
    ("features.transition1.global_context5x5.weight", (1, 80, 1, 1),
     "stages.1.transition.update_gate.context_b.score.weight", (1, 80, 1, 1)),
    ("features.transition1.fcall.weight", (40, 160, 1, 1),
     "stages.1.transition.update_gate.bottleneck.fc.weight", (40, 160)),
    ("features.transition1.bn_attention.running_var", (40,),
     "stages.1.transition.update_gate.bottleneck.norm.running_var", (40,)),
    ("features.transition1.fc5x5.weight", (80, 40, 1, 1), "stages.1.transition.update_gate.expand_b.weight", (80, 40)),
    ("features.transition3.conv1_1x1.conv.weight", (714, 952, 1, 1),
     "stages.3.transition.squeeze.conv1x1.conv.weight", (714, 952, 1, 1)),
    ("features.transition3.fc1.weight", (119, 476, 1, 1), "stages.3.transition.forget_gate.bottleneck.fc.weight",
     (119, 476)),
    ("features.transition3.bn_forget.weight", (119,), "stages.3.transition.forget_gate.bottleneck.norm.weight", (119,)),
    ("features.transition3.fc2.bias", (476,), "stages.3.transition.forget_gate.expand.bias", (476,)),
    # a hybrid block module: squeeze cell, excitation cell, update gate, forget gate
    ("features.hybridblock2.SMG3.conv1_1x1.conv.weight", (192, 176, 1, 1),
     "stages.1.block.layers.2.squeeze.conv1x1.conv.weight", (192, 176, 1, 1)),
    ("features.hybridblock2.SMG3.conv2_3x3.conv.weight", (48, 48, 3, 3),
     "stages.1.block.layers.2.squeeze.conv3x3.conv.weight", (48, 48, 3, 3)),
    ("features.hybridblock2.SMG3.conv_3x3.norm.running_var", (48,),
     "stages.1.block.layers.2.excite.conv3x3.norm.running_var", (48,)),
    ("features.hybridblock2.SMG3.conv_5x5.conv.weight", (48, 1, 3, 3),
     "stages.1.block.layers.2.excite.conv3x3_dilated.conv.weight", (48, 1, 3, 3)),
    ("features.hybridblock2.SMG3.global_context3x3.weight", (1, 48, 1, 1),
     "stages.1.block.layers.2.update_gate.context_a.score.weight", (1, 48, 1, 1)),
    ("features.hybridblock2.SMG3.global_context5x5.bias", (1,),
     "stages.1.block.layers.2.update_gate.context_b.score.bias", (1,)),
    ("features.hybridblock2.SMG3.fcall.weight", (48, 96, 1, 1),
     "stages.1.block.layers.2.update_gate.bottleneck.fc.weight", (48, 96)),
    ("features.hybridblock2.SMG3.bn_attention.running_mean", (48,),
     "stages.1.block.layers.2.update_gate.bottleneck.norm.running_mean", (48,)),
    ("features.hybridblock2.SMG3.fc3x3.weight", (48, 48, 1, 1), "stages.1.block.layers.2.update_gate.expand_a.weight",
     (48, 48)),
    ("features.hybridblock2.SMG3.fc5x5.bias", (48,), "stages.1.block.layers.2.update_gate.expand_b.bias", (48,)),
    ("features.hybridblock2.SMG3.global_forget_context.weight", (1, 48, 1, 1),
     "stages.1.block.layers.2.forget_gate.context.score.weight", (1, 48, 1, 1)),
    ("features.hybridblock2.SMG3.fc1.weight", (24, 48, 1, 1), "stages.1.block.layers.2.forget_gate.bottleneck.fc.weight",
     (24, 48)),
    ("features.hybridblock2.SMG3.bn_forget.num_batches_tracked", (),
     "stages.1.block.layers.2.forget_gate.bottleneck.norm.num_batches_tracked", ()),
    ("features.hybridblock2.SMG3.fc2.weight", (48, 24, 1, 1), "stages.1.block.layers.2.forget_gate.expand.weight",
     (48, 24)),
    ("features.hybridblock4.SMG8.conv_5x5.conv.weight", (96, 1, 3, 3),
     "stages.3.block.layers.7.excite.conv3x3_dilated.conv.weight", (96, 1, 3, 3)),
    # head
    ("features.norm5.weight", (1244,), "norm.weight", (1244,)),
    ("features.norm5.running_var", (1244,), "norm.running_var", (1244,)),
    ("classifier.weight", (1000, 1244), "classifier.weight", (1000, 1244)),
    ("classifier.bias", (1000,), "classifier.bias", (1000,)),
]


def test_imagenet_key_table_against_the_published_key_list_and_hcgnet_b():
    official = read_official_keys("HCGNet_B")
    with torch.device("meta"):
        ours = hcgnet.create_model("hcgnet_b").state_dict()
    for published, published_shape, key, shape in B_KEY_TABLE:
        assert official[published][0] == published_shape, published  # the table reads the key list right
        assert tuple(ours[key].shape) == shape, key
        assert published_to_hcgnet_key(published) == key, published


@pytest.fixture(scope="module")
def b_loaded(published_b):
    path, _ = published_b
    model = hcgnet.create_model("hcgnet_b")
    hcgnet.load_checkpoint(model, path)
    return model.state_dict()


def test_imagenet_key_table_values_land_where_the_table_says(published_b, b_loaded):
    _, sd = published_b
    for published, _, key, shape in B_KEY_TABLE:
        assert torch.equal(b_loaded[key], sd["module." + published].reshape(shape)), f"{published} -> {key}"


def test_stem_norms_are_not_interchangeable(published_b, b_loaded):
    # norm0 and norm1 have the same shape: only their values tell a swap apart
    _, sd = published_b
    assert not torch.equal(sd["module.features.norm0.weight"], sd["module.features.norm1.weight"])
    assert torch.equal(b_loaded["stem.norm0.weight"], sd["module.features.norm0.weight"])
    assert torch.equal(b_loaded["stem.norm1.running_mean"], sd["module.features.norm1.running_mean"])


# 2b. a checkpoint from PyTorch 0.4.0 (no num_batches_tracked) ------------------------------------


def _without_num_batches_tracked(tmp_path) -> Path:
    obj = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    net = {k: v for k, v in obj["net"].items() if not k.endswith("num_batches_tracked")}
    assert len(net) < len(obj["net"])
    path = tmp_path / "cifar_A1.torch040.pth.tar"
    torch.save({**obj, "net": net}, path)
    return path


def test_checkpoint_without_num_batches_tracked_gives_the_published_logits(tmp_path, io):
    path = _without_num_batches_tracked(tmp_path)
    model = hcgnet.create_model("hcgnet_a1", checkpoint_path=str(path))
    assert (logits(model, io["x"]) - io["y"]).abs().max().item() < 1e-4
    counts = [v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counts and all(int(c) == 0 for c in counts)


def test_timm_reads_a_checkpoint_without_num_batches_tracked(tmp_path, io):
    import timm

    path = _without_num_batches_tracked(tmp_path)
    model = timm.create_model("hcgnet_a1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert (logits(model, io["x"]) - io["y"]).abs().max().item() < 1e-4


# 3. a mismatch is an error naming the key ---------------------------------------------------


@pytest.fixture(scope="module")
def a1_published_sd():
    return synthesize_published("HCGNet_A1", seed=11)


@pytest.mark.parametrize("dropped", [
    "features.HybridBlock2.SMG4.fc3x3.weight",
    "features.Transition2.bn_forget.running_mean",
    "features.norm5.num_batches_tracked",
])
def test_missing_key_is_named(a1_published_sd, tmp_path, dropped):
    sd = dict(a1_published_sd)
    del sd["module." + dropped]
    path = save_published(sd, tmp_path / "missing.pth.tar")
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
    assert published_to_hcgnet_key(dropped) in str(e.value)
    assert "missing" in str(e.value)
    assert str(path) in str(e.value)


def test_unknown_published_key_is_named(a1_published_sd, tmp_path):
    sd = dict(a1_published_sd)
    sd["module.features.bogus_layer.weight"] = torch.zeros(3)
    path = save_published(sd, tmp_path / "extra.pth.tar")
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
    assert "features.bogus_layer.weight" in str(e.value)


def test_extra_key_of_a_deeper_network_is_named(a1_published_sd, tmp_path):
    # a well-formed published key for a ninth SMG module that HCGNet-A1 does not have
    extra = "features.HybridBlock1.SMG9.conv1_1x1.norm.weight"
    sd = dict(a1_published_sd)
    sd["module." + extra] = torch.ones(24)
    path = save_published(sd, tmp_path / "extra.pth.tar")
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
    assert published_to_hcgnet_key(extra) in str(e.value)
    assert "unexpected" in str(e.value)


def test_wrong_shape_is_named_with_both_shapes(a1_published_sd, tmp_path):
    key = "features.HybridBlock3.SMG2.conv2_3x3.conv.weight"
    sd = dict(a1_published_sd)
    good_shape = tuple(sd["module." + key].shape)
    bad_shape = (good_shape[0] + 1, *good_shape[1:])
    sd["module." + key] = torch.zeros(bad_shape)
    path = save_published(sd, tmp_path / "shape.pth.tar")
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
    message = str(e.value)
    assert published_to_hcgnet_key(key) in message
    assert str(bad_shape) in message
    assert str(good_shape) in message


def test_failed_strict_load_leaves_the_model_unchanged(a1_published_sd, tmp_path):
    sd = dict(a1_published_sd)
    del sd["module.classifier.bias"]
    path = save_published(sd, tmp_path / "missing.pth.tar")
    model = create("hcgnet_a1", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        hcgnet.load_checkpoint(model, path)
    assert_state_dicts_equal(before, model.state_dict())


def test_a1_checkpoint_into_a2_is_another_model():
    with pytest.raises(CheckpointError, match="another model"):
        hcgnet.load_checkpoint(create("hcgnet_a2", 10), FIXTURE)


def test_a1_checkpoint_into_create_model_a2_is_another_model():
    with pytest.raises(CheckpointError, match="another model"):
        hcgnet.create_model("hcgnet_a2", checkpoint_path=str(FIXTURE))


def test_class_count_mismatch_names_num_classes():
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 100), FIXTURE)
    assert "num_classes=10" in str(e.value) and "strict=False" in str(e.value)


def test_non_strict_load_skips_the_classifier_only(io, a1_loaded):
    model = create("hcgnet_a1", 100)
    classifier_before = model.classifier.weight.detach().clone()
    hcgnet.load_checkpoint(model, FIXTURE, strict=False)
    assert torch.equal(model.classifier.weight, classifier_before)
    ref = a1_loaded.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, ref[key]), key


# 4. hcgnet's own formats round-trip ----------------------------------------------------------


def test_own_torch_format_round_trips(tmp_path, io, a1_loaded):
    path = tmp_path / "own.pt"
    torch.save({"model": a1_loaded.state_dict(), "epoch": 5, "model_name": "hcgnet_a1", "num_classes": 10}, path)
    model = create("hcgnet_a1", 10)
    metadata = hcgnet.load_checkpoint(model, path)
    assert metadata == {"model_name": "hcgnet_a1", "num_classes": "10"}
    assert_state_dicts_equal(a1_loaded.state_dict(), model.state_dict())
    assert torch.equal(logits(model, io["x"]), logits(a1_loaded, io["x"]))


def test_safetensors_round_trips_with_metadata(tmp_path, io, a1_loaded):
    path = tmp_path / "a1.safetensors"
    save_safetensors(a1_loaded, path, {"model": "hcgnet_a1", "num_classes": 10, "note": "fixture"})
    model = create("hcgnet_a1", 10)
    metadata = hcgnet.load_checkpoint(model, path)
    assert metadata["model"] == "hcgnet_a1"
    assert metadata["num_classes"] == "10"
    assert metadata["note"] == "fixture"
    assert metadata["format"] == ckpt_module.SAFETENSORS_FORMAT
    assert_state_dicts_equal(a1_loaded.state_dict(), model.state_dict())
    assert torch.equal(logits(model, io["x"]), logits(a1_loaded, io["x"]))
    state_dict, metadata2 = read_state_dict(path)
    assert metadata2 == metadata
    assert set(state_dict) == set(a1_loaded.state_dict())


def test_safetensors_is_recognised_without_its_suffix(tmp_path, a1_loaded):
    path = tmp_path / "weights.bin"
    save_safetensors(a1_loaded, path)
    with safe_open(str(path), framework="pt") as f:  # it really is safetensors
        assert f.metadata()["format"] == ckpt_module.SAFETENSORS_FORMAT
    model = create("hcgnet_a1", 10)
    hcgnet.load_checkpoint(model, path)
    assert_state_dicts_equal(a1_loaded.state_dict(), model.state_dict())


def test_bare_state_dict_round_trips(tmp_path, io, a1_loaded):
    path = tmp_path / "bare.pth"
    torch.save(a1_loaded.state_dict(), path)
    model = create("hcgnet_a1", 10)
    assert hcgnet.load_checkpoint(model, path) == {}
    assert_state_dicts_equal(a1_loaded.state_dict(), model.state_dict())
    assert torch.equal(logits(model, io["x"]), logits(a1_loaded, io["x"]))


def test_data_parallel_prefixed_own_state_dict_loads(tmp_path, a1_loaded):
    path = tmp_path / "dp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in a1_loaded.state_dict().items()}}, path)
    model = create("hcgnet_a1", 10)
    hcgnet.load_checkpoint(model, path)
    assert_state_dicts_equal(a1_loaded.state_dict(), model.state_dict())


def test_save_safetensors_leaves_no_temporary_files(tmp_path, a1_loaded):
    path = tmp_path / "a1.safetensors"
    save_safetensors(a1_loaded, path)
    save_safetensors(a1_loaded, path)  # replacing an existing file too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1.safetensors"]


def test_save_safetensors_failure_keeps_the_old_file_and_no_temp(tmp_path, a1_loaded, monkeypatch):
    path = tmp_path / "a1.safetensors"
    save_safetensors(a1_loaded, path)
    before = path.read_bytes()

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", failing_save_file)
    with pytest.raises(OSError):
        save_safetensors(create("hcgnet_a1", 10), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1.safetensors"]


# 5. files that are not (safe) checkpoints ------------------------------------------------------


class MarkerPayload:
    """Unpickling this calls ``open(marker, "w")``: harmless, but it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    # proves that the payload in the next tests would run if a loader unpickled it
    marker = tmp_path / "pwned"
    data = pickle.dumps({"net": {"w": torch.zeros(1)}, "x": MarkerPayload(marker)})
    assert not marker.exists()
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_code_payload_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    obj = {"net": {"module.features.conv0.weight": torch.zeros(24, 3, 3, 3)}, "payload": MarkerPayload(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # torch's pickle-protocol notice came before the refusal: not for users
        with pytest.raises(CheckpointError) as e:
            hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
    assert "refused" in str(e.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        hcgnet.create_model("hcgnet_a1", checkpoint_path=str(path))
    assert not marker.exists()


def test_os_system_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned_os"

    class OsSystem:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "x": OsSystem()}, path)
    with pytest.raises(CheckpointError):
        read_state_dict(path)
    assert not marker.exists()


def _exported_files(folder: Path) -> Dict[str, Path]:
    """One small file of each deployment format, each made by its own library (not hcgnet's export)."""
    import onnx
    from onnx import TensorProto, helper

    module = torch.nn.Linear(3, 2)
    files = {"a TorchScript export": folder / "scripted.pt", "a torch.export program (.pt2)": folder / "program.pt2",
             "an ONNX export": folder / "model.onnx", "an OpenVINO model (.xml)": folder / "model.xml"}
    torch.jit.save(torch.jit.script(module), str(files["a TorchScript export"]))
    torch.export.save(torch.export.export(module, (torch.randn(1, 3),)), str(files["a torch.export program (.pt2)"]))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(files["an ONNX export"]))
    files["an OpenVINO model (.xml)"].write_text('<?xml version="1.0"?>\n<net name="m" version="11"/>\n')
    shutil.copy(files["an ONNX export"], folder / "onnx-without-suffix")   # told apart by its first bytes
    files["an ONNX export (no suffix)"] = folder / "onnx-without-suffix"
    return files


def test_an_exported_file_is_refused_as_what_it_is_without_loading_it(tmp_path, monkeypatch, capsys):
    """An export passed where a checkpoint goes: one line naming what it is and what to pass instead, no warning
    (``torch.load`` warns on a TorchScript archive before refusing it under ``weights_only``); nothing is ever
    handed to ``torch.jit.load``."""
    from hcgnet.cli import main

    files = _exported_files(tmp_path)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    image = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(image)
    for kind, path in files.items():
        kind = kind.replace(" (no suffix)", "")
        with pytest.raises(CheckpointError, match="is " + kind.replace("(", r"\(").replace(")", r"\)")):
            read_state_dict(path)
        for argv in (["predict", "--checkpoint", path, image], ["eval", "--checkpoint", path], ["info", path]):
            code = main([str(a) for a in argv])
            out, err = capsys.readouterr()
            # predict and eval run an ONNX file that hcgnet export wrote; info describes what hcgnet export writes
            if "ONNX" in kind or (argv[0] == "info" and "OpenVINO" not in kind):
                assert code == 2 and out == "" and err == (
                    f"hcgnet: error: {path} carries no class names or preprocessing; write it with hcgnet export "
                    "(which records them), or pass the checkpoint it was exported from\n"), err
                continue
            assert code == 2 and out == "" and err == (
                f"hcgnet: error: {path} is {kind}, not a checkpoint: hcgnet reads the weights files that train and "
                "convert write (.safetensors, .pt, .pth); pass the checkpoint it was exported from\n"), (argv, err)


def test_truncated_torch_file_says_truncated(tmp_path):
    whole = FIXTURE.read_bytes()
    path = tmp_path / "half.pth.tar"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
    assert "truncated" in str(e.value)
    assert str(path) in str(e.value)


def test_truncated_safetensors_file_says_truncated(tmp_path, a1_loaded):
    good = tmp_path / "a1.safetensors"
    save_safetensors(a1_loaded, good)
    whole = good.read_bytes()
    for name in ("half.safetensors", "half.bin"):  # with and without the suffix
        path = tmp_path / name
        path.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(CheckpointError) as e:
            hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
        assert "truncated" in str(e.value), name


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(1234)
    for i in range(40):
        path = tmp_path / f"random{i}.pth"
        size = (9, 100, 4096, 65536)[i % 4]
        path.write_bytes(bytes(torch.randint(0, 256, (size,), generator=g, dtype=torch.uint8).tolist()))
        with pytest.raises(CheckpointError):
            read_state_dict(path)


@pytest.mark.parametrize("name, content", [
    ("notes.txt", b"these are not weights\n"),
    ("weights.pth", b"hello\n"),
    ("zero.pth", b"0"),
    ("weights.safetensors", b"these are not weights\n"),
    ("config.json", b'{"model": "hcgnet_a1"}\n'),
    ("empty.pth", b""),
])
def test_text_and_empty_files_are_not_checkpoints(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 10), path)
    assert name in str(e.value)


@pytest.mark.parametrize("obj", [[torch.zeros(2)], torch.zeros(3), {}, {"net": {"a": 1}}, {"epoch": 3}])
def test_torch_files_without_a_state_dict_are_refused(tmp_path, obj):
    path = tmp_path / "odd.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_missing_path_is_a_checkpoint_error(tmp_path):
    missing = tmp_path / "nowhere" / "HCGNet_B_best.pth.tar"
    with pytest.raises(CheckpointError) as e:
        hcgnet.load_checkpoint(create("hcgnet_a1", 10), missing)
    assert str(missing) in str(e.value)
    with pytest.raises(CheckpointError):
        hcgnet.create_model("hcgnet_a1", checkpoint_path=str(missing))
    with pytest.raises(CheckpointError):  # a folder is not a file either
        read_state_dict(tmp_path)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, hcgnet.HCGNetError)
    assert issubclass(CheckpointError, ValueError)


# 6. pretrained=True looks in HCGNET_HOME and never downloads ------------------------------------


def test_pretrained_missing_names_folder_and_file(tmp_path, monkeypatch):
    home = tmp_path / "weights"
    home.mkdir()
    monkeypatch.setenv("HCGNET_HOME", str(home))
    with pytest.raises(CheckpointError) as e:
        hcgnet.create_model("hcgnet_b", pretrained=True)
    assert str(home) in str(e.value)
    assert "HCGNet_B_best.pth.tar" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        hcgnet.create_model("hcgnet_c", pretrained=True)
    assert "HCGNet_C_best.pth.tar" in str(e.value)
    assert list(home.iterdir()) == []  # nothing was downloaded or written


def test_pretrained_default_folder_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HCGNET_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        hcgnet.create_model("hcgnet_b", pretrained=True)
    assert str(tmp_path / ".cache" / "hcgnet") in str(e.value)


def test_pretrained_loads_the_published_file_from_hcgnet_home(tmp_path, monkeypatch, published_b):
    source, sd = published_b
    home = tmp_path / "weights"
    home.mkdir()
    shutil.copy(source, home / "HCGNet_B_best.pth.tar")
    monkeypatch.setenv("HCGNET_HOME", str(home))
    model = hcgnet.create_model("hcgnet_b", pretrained=True)
    assert model.num_classes == 1000
    loaded = model.state_dict()
    for key, value in sd.items():
        ours = published_to_hcgnet_key(key[len("module."):])
        target = loaded[ours]
        assert torch.equal(target, value.flatten(1) if value.dim() == 4 and target.dim() == 2 else value), ours


def test_published_weights_carry_their_licence_in_the_pretrained_cfg(published_b):
    path, _ = published_b
    cfg = hcgnet.create_model("hcgnet_b", checkpoint_path=str(path)).pretrained_cfg
    assert cfg["license"] == "other" and "research-only" in cfg["notes"][0]
    assert cfg["file"] == str(path)
    # weights that are not the authors' (the A1 fixture has no published release) carry no licence
    assert "license" not in hcgnet.create_model("hcgnet_a1", checkpoint_path=str(FIXTURE)).pretrained_cfg


def test_pretrained_prefers_converted_safetensors(tmp_path, monkeypatch, published_b):
    source, sd = published_b
    home = tmp_path / "weights"
    home.mkdir()
    shutil.copy(source, home / "HCGNet_B_best.pth.tar")
    model = hcgnet.create_model("hcgnet_b", checkpoint_path=str(source))
    with torch.no_grad():
        model.stem.conv0.weight.add_(1.0)  # different from the .pth.tar
    save_safetensors(model, home / "hcgnet_b.safetensors")
    monkeypatch.setenv("HCGNET_HOME", str(home))
    again = hcgnet.create_model("hcgnet_b", pretrained=True)
    assert torch.equal(again.stem.conv0.weight, model.stem.conv0.weight)


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
def test_the_published_weights_tag_loads_them_from_hcgnet_home_whatever_the_working_folder(
        tmp_path, monkeypatch, published_b, factory):
    import timm
    source, _ = published_b
    home, elsewhere = tmp_path / "weights", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    shutil.copy(source, home / "HCGNet_B_best.pth.tar")
    # a file of the published name in the working folder must not be what is loaded
    (elsewhere / "HCGNet_B_best.pth.tar").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("HCGNET_HOME", str(home))
    monkeypatch.chdir(elsewhere)
    create = hcgnet.create_model if factory == "hcgnet" else timm.create_model
    tagged = create("hcgnet_b.published_in1k", pretrained=True)
    reference = hcgnet.create_model("hcgnet_b", checkpoint_path=str(source))
    assert all(torch.equal(a, b) for a, b in zip(tagged.state_dict().values(), reference.state_dict().values()))
    assert tagged.pretrained_cfg["file"] == str(home / "HCGNet_B_best.pth.tar")
    with pytest.raises(hcgnet.ModelSpecError, match="its tags: published_in1k"):
        hcgnet.create_model("hcgnet_b.in1k", pretrained=True)
    with pytest.raises(hcgnet.ModelSpecError, match="hcgnet_a1 has no weights tagged"):
        hcgnet.create_model("hcgnet_a1.published_in1k")


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_weights_adapt_to_other_input_channels_and_classes_as_timm_does(
        tmp_path, monkeypatch, published_b, factory, in_chans):
    """timm's pretrained=True: the first convolution summed over RGB for one channel, tiled and scaled by 3/C
    for more; the classifier left out (a new one) when num_classes differs; everything else loaded."""
    import timm
    source, _ = published_b
    monkeypatch.setenv("HCGNET_HOME", str(source.parent))
    reference = hcgnet.create_model("hcgnet_b", checkpoint_path=str(source))
    create = hcgnet.create_model if factory == "hcgnet" else timm.create_model
    torch.manual_seed(0)
    model = create("hcgnet_b", pretrained=True, in_chans=in_chans, num_classes=10)
    rgb = reference.stem.conv0.weight
    expected = rgb.sum(dim=1, keepdim=True) if in_chans == 1 else torch.cat([rgb, rgb], 1)[:, :in_chans] * 3 / in_chans
    assert torch.allclose(model.stem.conv0.weight, expected, rtol=1e-6, atol=1e-7)
    assert model.classifier.weight.shape == (10, reference.classifier.in_features)
    ours, theirs = model.state_dict(), reference.state_dict()
    body = [k for k in theirs if k != "stem.conv0.weight" and not k.startswith("classifier.")]
    assert all(torch.equal(ours[k], theirs[k]) for k in body)
    torch.manual_seed(0)
    fresh = create("hcgnet_b", in_chans=in_chans, num_classes=10)  # the new classifier: as a model without weights
    assert torch.equal(model.classifier.weight, fresh.classifier.weight)
    # an explicit file stays strict, as timm's checkpoint_path: another class count is named, not dropped
    with pytest.raises(CheckpointError, match="trained for 1000 classes but the model has 10"):
        hcgnet.create_model("hcgnet_b", checkpoint_path=str(source), num_classes=10)


@pytest.mark.parametrize("name", ["hcgnet_a1", "hcgnet_a2", "hcgnet_a3", "HCGNet-(4,4)-(k=12,24)"])
def test_pretrained_for_unpublished_models_says_none_were_published(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HCGNET_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="no pretrained weights were published"):
        hcgnet.create_model(name, pretrained=True)


# 7. timm reads the converted safetensors -----------------------------------------------------


def test_timm_loads_converted_safetensors(tmp_path, io, a1_loaded):
    import timm

    path = tmp_path / "hcgnet_a1.safetensors"
    save_safetensors(a1_loaded, path, {"model": "hcgnet_a1", "num_classes": 10})
    model = timm.create_model("hcgnet_a1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert isinstance(model, hcgnet.HCGNet)
    y = logits(model, io["x"])
    assert (y - io["y"]).abs().max().item() < 1e-4
    assert_state_dicts_equal(a1_loaded.state_dict(), model.state_dict())


def test_a_spec_saved_with_the_imagenet_stem_loads_back_as_that_network(tmp_path):
    """Nothing but the weights says which stem a spec was trained with: the ImageNet stem's norms do."""
    spec = "HCGNet-(1,1,1)-(k=4,4,4)"
    torch.manual_seed(0)
    model = hcgnet.create_model(spec, num_classes=3, stem="imagenet").eval()
    save_safetensors(model, tmp_path / "w.safetensors", {"model_name": spec})
    loaded = hcgnet.create_model(spec, checkpoint_path=str(tmp_path / "w.safetensors")).eval()
    assert hasattr(loaded.stem, "norm0")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_detector_checkpoint_is_named_as_one_by_every_loader(tmp_path):
    """A detector's weights (hcgnet detect train's files, or its bare state dict, or one saved from
    DataParallel) are not "another model" to a classifier's loader: it says what they are."""
    from coco_toy import TOY_MODEL, TOY_OPTIONS
    from hcgnet.detection.checkpoint import detector_metadata
    from hcgnet.detection.models import build_detector
    from hcgnet.training.finetune import load_initial_checkpoint

    detector = build_detector(TOY_MODEL, "box", num_classes=2, trainable_stages=3, trained=True, min_size=64, max_size=96,
                              **TOY_OPTIONS)
    weights = detector.state_dict()
    meta = detector_metadata(TOY_MODEL, "box", ["ball"], [1], 64, 96, 3, TOY_OPTIONS)
    files = [tmp_path / "final.safetensors", tmp_path / "last.pt", tmp_path / "bare.pth", tmp_path / "dp.pth"]
    save_safetensors(detector, files[0], meta)
    torch.save({"model": weights, **meta}, files[1])
    torch.save(weights, files[2])
    torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}}, files[3])
    for path in files:
        message = f"{path} is a detector checkpoint (hcgnet detect train): use it with hcgnet detect eval"
        for load in (lambda: read_state_dict(path),
                     lambda: hcgnet.load_checkpoint(hcgnet.create_model(TOY_MODEL, num_classes=2), path),
                     lambda: hcgnet.create_model(TOY_MODEL, checkpoint_path=str(path)),
                     lambda: load_initial_checkpoint(hcgnet.create_model(TOY_MODEL, num_classes=2), str(path))):
            with pytest.raises(CheckpointError) as e:
                load()
            assert str(e.value).startswith(message), e.value


# 8. save_safetensors: a model's file says what rebuilds it --------------------------------------


@pytest.mark.parametrize("name,kwargs,expected", [
    ("hcgnet_a1", dict(forget_gate=False, num_classes=7),
     dict(model_name="hcgnet_a1", num_classes="7", in_chans="3")),
    ("HCGNet-(2,2,2)-(k=8,8,8)", dict(stem="imagenet", in_chans=1, num_classes=5),
     dict(model_name="HCGNet-(2,2,2)-(k=8,8,8)", num_classes="5", in_chans="1")),
    ("densenet_bc_100_k12", dict(depth=22, growth_rate=7),
     dict(model_name="densenet_bc_100_k12", num_classes="10", in_chans="3",
          switches='{"depth": 22, "growth_rate": 7, "compression": 0.5, "bn_size": 4}')),
    ("resnet20_cifar", dict(depth=8, widths=(9, 18, 36)),
     dict(model_name="resnet20_cifar", num_classes="10", in_chans="3", switches='{"depth": 8, "widths": [9, 18, 36]}')),
])
def test_save_safetensors_records_what_rebuilds_the_model_and_load_model_needs_no_name(tmp_path, name, kwargs,
                                                                                      expected):
    from hcgnet.inference import load_model
    from hcgnet.models.checkpoints import read_metadata

    torch.manual_seed(0)
    model = hcgnet.create_model(name, **kwargs).eval()
    path = tmp_path / "mine.safetensors"
    save_safetensors(model, path)
    meta = read_metadata(path)
    assert {k: meta[k] for k in expected} == expected
    again, _ = load_model(str(path))
    x = torch.randn(2, model.in_chans, 40, 36)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    save_safetensors(model, path, {"model_name": "given", "extra": 3})   # what the caller says wins
    assert read_metadata(path)["model_name"] == "given" and read_metadata(path)["extra"] == "3"


def test_a_hcgnet_variant_with_a_switch_off_is_rebuilt_with_it_from_its_file(tmp_path):
    model = hcgnet.create_model("hcgnet_a1", forget_gate=False, num_classes=7)
    save_safetensors(model, tmp_path / "a.safetensors")
    again = hcgnet.create_model("hcgnet_a1", checkpoint_path=str(tmp_path / "a.safetensors"))
    assert again.switches["forget_gate"] is False and again.num_classes == 7


def test_a_checkpoint_path_with_a_tilde_is_the_home_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save_safetensors(hcgnet.create_model("hcgnet_a1", num_classes=3), tmp_path / "mine.safetensors")
    assert hcgnet.create_model("hcgnet_a1", checkpoint_path="~/mine.safetensors").num_classes == 3


def test_create_model_of_something_other_than_a_name_is_one_line():
    with pytest.raises(hcgnet.ModelSpecError, match=r"create_model takes a model name .* got None"):
        hcgnet.create_model(None)


def test_a_file_with_gates_that_a_switched_model_lacks_names_a_parameter_and_the_switch(tmp_path):
    save_safetensors(hcgnet.create_model("hcgnet_a1").state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError) as e:
        hcgnet.create_model("hcgnet_a1", checkpoint_path=str(tmp_path / "plain.safetensors"), forget_gate=False)
    message = str(e.value)
    # A1: 24 SMG modules and 2 transitions with a forget gate, 11 tensors each (10 + a step counter)
    assert "unexpected key 'stages.0.block.layers.0.forget_gate." in message and "(286 unexpected)" in message
    assert "num_batches_tracked" not in message
    assert message.endswith("(the file has forget gates this model was built without: leave out forget_gate=False)")


def test_a_file_whose_metadata_names_another_network_is_refused_naming_both(tmp_path):
    """The shapes would say only "for another model" (and for a detector, of the classifier it drops)."""
    from hcgnet.detection import fasterrcnn_hcgnet

    tiny = "HCGNet-(1,1,1,1)-(k=8,8,8,8)"
    path = tmp_path / "tiny.safetensors"
    save_safetensors(hcgnet.create_model(tiny, num_classes=1000), path)
    b = "HCGNet-(3,6,12,8)-(k=32,48,64,96)"
    with pytest.raises(CheckpointError) as e:
        hcgnet.create_model("hcgnet_b", checkpoint_path=str(path))
    assert str(e.value) == (f"{path} holds {tiny} (by its metadata), not hcgnet_b ({b}); create '{tiny}' instead, "
                            "or let hcgnet.inference.load_model read the network from the file")
    from hcgnet.inference import load_model   # the function the message names exists and does that
    assert load_model(str(path))[0].spec == tiny
    with pytest.raises(CheckpointError, match=r"holds HCGNet-\(1,1,1,1\)-\(k=8,8,8,8\) \(by its metadata\), not "
                                              r"hcgnet_b"):
        fasterrcnn_hcgnet("hcgnet_b", num_classes=3, weights_backbone=str(path))
    # the same network under another name of it loads
    assert hcgnet.create_model(" hcgnet-(1,1,1,1)-(k=8,8,8,8)", checkpoint_path=str(path)).num_classes == 1000

"""hcgnet the timm way: pretrained_cfgs, published checkpoints through timm's own loader, save_for_hf and
local-dir: / hf-hub: round trips (offline), grad checkpointing, parameter groups, DropBlock, and the
one-line errors for arguments a network cannot take."""
import json
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import DropBlock2d

import hcgnet
from hcgnet import HCGNet
from hcgnet.complexity import count_params
from hcgnet.errors import HCGNetError, ModelSpecError
from hcgnet.models import hcgnet as hcgnet_module
from hcgnet.models.checkpoints import save_safetensors

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PUBLISHED_A1 = FIXTURES / "cifar_A1.official.pth.tar"
TINY = "HCGNet-(1,2,1)-(k=4,4,4)"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def io():
    return torch.load(FIXTURES / "cifar_A1.io.pt", map_location="cpu", weights_only=True)


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# pretrained_cfgs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hcgnet_a1", "hcgnet_a2", "hcgnet_a3"])
def test_cifar_variants_carry_the_cifar_preprocessing(name):
    cfg = timm.create_model(name, pretrained_cfg_overlay=dict(), num_classes=10).pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["pool_size"] == (8, 8)
    assert cfg["mean"] == (0.4914, 0.4822, 0.4465) and cfg["std"] == (0.2470, 0.2435, 0.2616)
    assert cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "center" and cfg["interpolation"] == "bilinear"
    assert cfg["paper_ids"] == "arXiv:1908.09699"
    assert cfg["origin_url"] == "https://github.com/winycg/HCGNet"
    assert cfg["architecture"] == name and cfg["first_conv"] == "stem.conv0" and cfg["classifier"] == "classifier"


@pytest.mark.parametrize("name,weights", [("hcgnet_b", "HCGNet_B_best.pth.tar"), ("hcgnet_c", "HCGNet_C_best.pth.tar")])
def test_published_imagenet_weights_have_a_tag_licence_and_the_imagenet_preprocessing(name, weights):
    assert timm.list_models(f"{name}*", include_tags=True) == [f"{name}.published_in1k"]
    with torch.device("meta"):
        cfg = timm.create_model(f"{name}.published_in1k").pretrained_cfg
    assert cfg["tag"] == "published_in1k"
    assert cfg["license"] == "other" and "research-only" in cfg["notes"][0]
    assert weights in cfg["description"]
    assert cfg["input_size"] == (3, 224, 224) and cfg["pool_size"] == (7, 7)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["crop_pct"] == 0.875 and cfg["num_classes"] == 1000
    assert not cfg["hf_hub_id"] and not cfg["url"]  # nothing to download yet


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
def test_the_pretrained_cfg_follows_the_stem_actually_built(factory):
    if factory == "hcgnet":
        model = hcgnet.create_model("HCGNet-(2,2,2)-(k=8,8,8)", stem="imagenet")
    else:
        model = timm.create_model("hcgnet", block_depths=(2, 2, 2), growth_rates=(8, 8, 8), stem="imagenet")
    assert isinstance(model.stem.pool, torch.nn.MaxPool2d)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == (0.485, 0.456, 0.406)
    assert cfg["pool_size"] == (14, 14)  # stride 4 stem, two transitions: 224 / 16
    a1 = timm.create_model("hcgnet_a1", stem="imagenet") if factory == "timm" else hcgnet.create_model(
        "hcgnet_a1", stem="imagenet")
    assert a1.pretrained_cfg["input_size"] == (3, 224, 224) and a1.pretrained_cfg["pool_size"] == (14, 14)
    assert timm.data.resolve_data_config({}, model=a1)["mean"] == (0.485, 0.456, 0.406)


# the published checkpoint format, read by timm --------------------------------------------------


def test_timm_loads_the_published_checkpoint_and_gives_the_published_logits(io):
    model = timm.create_model("hcgnet_a1", pretrained=True, pretrained_cfg_overlay=dict(file=str(PUBLISHED_A1)))
    assert (logits(model, io["x"]) - io["y"]).abs().max().item() < 1e-4


def test_timm_checkpoint_path_takes_the_published_file_as_it_is(io):
    # timm.load_checkpoint hands {'net': ..., 'acc': ..., 'epoch': ...} to load_state_dict unchanged
    model = timm.create_model("hcgnet_a1", checkpoint_path=str(PUBLISHED_A1))
    assert (logits(model, io["x"]) - io["y"]).abs().max().item() < 1e-4


def test_load_state_dict_takes_a_published_state_dict_with_module_prefix(io):
    published = torch.load(PUBLISHED_A1, map_location="cpu", weights_only=True)["net"]
    assert next(iter(published)).startswith("module.features.")
    model = hcgnet.create_model("hcgnet_a1")
    model.load_state_dict(published)
    assert (logits(model, io["x"]) - io["y"]).abs().max().item() < 1e-4
    model.load_state_dict(model.state_dict())  # hcgnet's own keys pass through untouched


def test_timm_fine_tuning_from_the_published_checkpoint_keeps_all_but_the_classifier(io):
    model = timm.create_model("hcgnet_a1", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(PUBLISHED_A1)))
    reference = hcgnet.create_model("hcgnet_a1", checkpoint_path=str(PUBLISHED_A1))
    assert model.classifier.out_features == 3
    ours, theirs = model.state_dict(), reference.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("classifier."))


def test_timm_reads_checkpoints_without_running_their_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth.tar"
    torch.save({"net": {"module.features.conv0.weight": torch.zeros(1)}, "acc": Payload()}, evil)
    with pytest.raises(Exception):
        timm.create_model("hcgnet_a1", pretrained=True, pretrained_cfg_overlay=dict(file=str(evil)))
    assert not marker.exists()


def test_timm_pretrained_without_a_file_says_where_to_put_the_published_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HCGNET_HOME", str(tmp_path))
    with torch.device("meta"), pytest.raises(HCGNetError, match="HCGNet_B_best.pth.tar") as e:
        timm.create_model("hcgnet_b", pretrained=True)
    assert str(tmp_path) in str(e.value)


# save_for_hf, local-dir:, hf-hub: -------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_spec(tmp_path_factory):
    """A spec network with the ImageNet stem and 5 classes, saved by timm's save_for_hf."""
    torch.manual_seed(0)
    model = hcgnet.create_model("HCGNet-(2,2,2)-(k=8,8,8)", stem="imagenet", num_classes=5).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    timm.models.save_for_hf(model, folder, safe_serialization=True)
    return model, folder


def test_save_for_hf_of_a_spec_names_a_registered_architecture(saved_spec):
    _, folder = saved_spec
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "hcgnet"
    args = config["model_args"]
    assert (args["block_depths"], args["growth_rates"], args["stem"]) == ([2, 2, 2], [8, 8, 8], "imagenet")
    assert config["num_classes"] == 5


def test_local_dir_rebuilds_the_saved_network_with_its_weights(saved_spec):
    model, folder = saved_spec
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    x = torch.randn(2, 3, 64, 64)
    assert type(loaded) is HCGNet and loaded.num_classes == 5
    assert torch.equal(logits(model, x), logits(loaded, x))
    assert timm.data.resolve_data_config({}, model=loaded)["input_size"] == (3, 224, 224)


def test_hf_hub_path_loads_once_the_files_are_on_the_hub(saved_spec, monkeypatch):
    """Offline: timm's hub downloads are replaced by the files save_for_hf wrote."""
    import timm.models._hub as hub

    model, folder = saved_spec
    asked = []

    def fake_download(repo_id, filename, *args, **kwargs):
        asked.append((repo_id, filename))
        path = folder / filename
        if not path.exists():
            raise hub.EntryNotFoundError(filename) if hasattr(hub, "EntryNotFoundError") else FileNotFoundError(path)
        return str(path)

    monkeypatch.setattr(hub, "download_from_hf", lambda model_id, filename, **kw: fake_download(model_id, filename))
    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    loaded = timm.create_model("hf-hub:someone/hcgnet-tiny", pretrained=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(logits(model, x), logits(loaded, x))
    assert ("someone/hcgnet-tiny", "config.json") in asked
    assert ("someone/hcgnet-tiny", "model.safetensors") in asked


def test_a_variant_with_another_class_count_round_trips_through_local_dir(tmp_path, io):
    model = hcgnet.create_model("hcgnet_a1", checkpoint_path=str(PUBLISHED_A1))
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "hcgnet_a1"
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert (logits(loaded, io["x"]) - io["y"]).abs().max().item() < 1e-4


# a run's own preprocessing ---------------------------------------------------------------------


def test_own_checkpoint_gives_its_preprocessing_to_resolve_data_config(tmp_path):
    model = hcgnet.create_model(TINY, num_classes=3)
    data_config = dict(name="imagefolder", input_size=[3, 48, 48], mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6],
                       resize=64, class_names=["cat", "dog", "owl"])
    path = tmp_path / "best.safetensors"
    save_safetensors(model, path, {"model_name": TINY, "num_classes": 3, "data_config": json.dumps(data_config)})
    loaded = hcgnet.create_model(TINY, checkpoint_path=str(path))
    cfg = timm.data.resolve_data_config({}, model=loaded)
    assert cfg["input_size"] == (3, 48, 48)
    assert cfg["mean"] == (0.1, 0.2, 0.3) and cfg["std"] == (0.4, 0.5, 0.6)
    assert cfg["crop_pct"] == 0.75  # 48 of a 64 resize
    assert loaded.pretrained_cfg["label_names"] == ("cat", "dog", "owl")
    assert loaded.pretrained_cfg["pool_size"] == (12, 12)


# grad checkpointing, parameter groups ------------------------------------------------------------


def test_set_grad_checkpointing_switches_the_memory_efficient_mode(monkeypatch):
    torch.manual_seed(0)
    model = hcgnet.create_model(TINY).train()
    x = torch.randn(2, 3, 16, 16)
    recomputed = []
    original = hcgnet_module._recomputed
    monkeypatch.setattr(hcgnet_module, "_recomputed", lambda layer, f: recomputed.append(layer) or original(layer, f))

    def grads():
        model.zero_grad()
        model(x).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    assert recomputed == []
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(recomputed) == 4 + 2  # every SMG module of the hybrid blocks, and both transitions
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
    model.set_grad_checkpointing(False)
    recomputed.clear()
    grads()
    assert recomputed == []


def test_set_grad_checkpointing_through_timm_and_memory_efficient_agree():
    model = timm.create_model("hcgnet", block_depths=(1, 1), growth_rates=(4, 4))
    model.set_grad_checkpointing()
    built = hcgnet.create_model("HCGNet-(1,1)-(k=4,4)", memory_efficient=True)
    assert [s.block.memory_efficient for s in model.stages] == [s.block.memory_efficient for s in built.stages]
    assert [s.recompute_transition for s in model.stages] == [False, True]


def test_group_matcher_orders_stem_stages_and_head():
    model = hcgnet.create_model(TINY)
    fine = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    prefixes = lambda groups: [sorted({".".join(n.split(".")[:5]) for n in names}) for names in groups.values()]
    assert prefixes(coarse)[0] == ["stem.conv0.weight"]
    assert len(coarse) == 5  # stem, three stages, head
    assert all(n.startswith("stages.1.") for n in coarse[2])
    assert sorted(coarse[4]) == ["classifier.bias", "classifier.weight", "norm.bias", "norm.weight"]
    # stem; stage 0: one SMG module; stage 1: transition, two modules; stage 2: transition, one; head
    firsts = [sorted(names)[0] for names in fine.values()]
    assert [".".join(n.split(".")[:5]) for n in firsts] == [
        "stem.conv0.weight", "stages.0.block.layers.0", "stages.1.transition.excite.conv3x3",
        "stages.1.block.layers.0", "stages.1.block.layers.1", "stages.2.transition.excite.conv3x3",
        "stages.2.block.layers.0", "classifier.bias",
    ]


def test_layer_decay_param_groups_build():
    from timm.optim import create_optimizer_v2

    model = hcgnet.create_model(TINY)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups})
    assert len(scales) == 8 and scales[-1] == 1.0 and scales[0] == 0.5 ** 7


# DropBlock ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
def test_drop_block_sits_after_each_transition(factory):
    if factory == "hcgnet":
        model = hcgnet.create_model("hcgnet_a1", drop_block_rate=0.1)
    else:
        model = timm.create_model("hcgnet_a1", drop_block_rate=0.1)
    blocks = [m for m in model.modules() if isinstance(m, DropBlock2d)]
    assert len(blocks) == 2
    assert [(b.drop_prob, b.block_size) for b in blocks] == [(0.1, 2), (0.1, 2)]
    assert model.stages[1].drop_block is blocks[0] and model.stages[2].drop_block is blocks[1]
    assert not isinstance(model.stages[0].drop_block, DropBlock2d)  # no transition before the first block
    names = list(dict(model.named_children())["stages"][1]._modules)
    assert names.index("transition") < names.index("drop_block") < names.index("block")


def test_drop_block_drops_the_transition_output_in_training_only():
    torch.manual_seed(0)
    model = hcgnet.create_model(TINY, drop_block_rate=0.5)
    seen = {}
    model.stages[1].transition.register_forward_hook(lambda m, i, o: seen.__setitem__("transition", o.clone()))
    model.stages[1].block.register_forward_hook(lambda m, i, o: seen.__setitem__("block_input", i[0].clone()))
    x = torch.randn(4, 3, 32, 32)
    model.train()(x)
    dropped = (seen["block_input"] == 0) & (seen["transition"] != 0)
    assert dropped.any()
    model.eval()(x)
    assert torch.equal(seen["block_input"], seen["transition"])


def test_drop_block_rate_zero_changes_nothing():
    torch.manual_seed(0)
    plain = hcgnet.create_model("hcgnet_a1")
    with_drop = hcgnet.create_model("hcgnet_a1", drop_block_rate=0.1)
    zero = hcgnet.create_model("hcgnet_a1", drop_block_rate=0.0)
    assert list(plain.state_dict()) == list(with_drop.state_dict()) == list(zero.state_dict())
    assert count_params(plain) == count_params(with_drop) == 1_065_301
    assert not any(isinstance(m, DropBlock2d) for m in zero.modules())
    with_drop.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(logits(plain, x), logits(with_drop, x))  # eval: DropBlock is the identity


# arguments a network cannot take -----------------------------------------------------------------


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
@pytest.mark.parametrize("kwargs,message", [
    (dict(features_only=True, out_indices=(5,)), r"out_indices \(5,\) out of range: this network has stages 0\.\.2"),
    (dict(features_only=True, out_indices=(0, -4)), r"out_indices \(0, -4\) out of range"),
    (dict(in_chans=0), "in_chans must be a whole number, 1 or more"),
    (dict(in_chans=-3), "in_chans must be a whole number, 1 or more"),
    (dict(num_classes=-1), "num_classes must be a whole number, 0"),
    (dict(num_classes=10.0), r"num_classes must be a whole number, 0 \(no classifier\) or more, got 10.0"),
    (dict(num_classes="10"), r"num_classes must be a whole number, 0 \(no classifier\) or more, got '10'"),
    (dict(in_chans=2.0), r"in_chans must be a whole number, 1 or more \(3 for RGB images, 1 for grayscale\), "
                         r"got 2.0"),
    (dict(drop_block_rate=1.5), r"drop_block_rate must be in \[0, 1\)"),
    (dict(features_only=True, out_indices=4), r"out_indices=4 \(the last 4 stages\): this network has 3 stages"),
    (dict(features_only=True, out_indices="1"), r"out_indices must be stage indices"),
    (dict(block_depths=(1, 1, 1)), r"hcgnet_a1 is HCGNet-\(8,8,8\)-\(k=12,24,36\); for block_depths=\(1, 1, 1\) and "
                                   r"growth_rates=\(12, 24, 36\) build the spec 'HCGNet-\(1,1,1\)-\(k=12,24,36\)'"),
    (dict(growth_rates=(8, 8, 8)), r"build the spec 'HCGNet-\(8,8,8\)-\(k=8,8,8\)'"),
])
def test_arguments_a_network_cannot_take_are_one_line_errors(factory, kwargs, message):
    create = hcgnet.create_model if factory == "hcgnet" else timm.create_model
    with pytest.raises(ModelSpecError, match=message) as e:
        create("hcgnet_a1", **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
def test_out_indices_as_a_count_is_the_last_stages_as_in_timm(factory):
    """timm reads an int ``out_indices=n`` as the last n stages (resnet18, out_indices=2: its last two)."""
    create = hcgnet.create_model if factory == "hcgnet" else timm.create_model
    assert create("hcgnet_b", features_only=True, out_indices=2).feature_info.channels() == [952, 1244]
    assert create("hcgnet_a1", features_only=True, out_indices=3).feature_info.channels() == [120, 252, 414]
    # a variant's own depths and growth rates given again are no change (timm's save_for_hf passes them back)
    assert count_params(create("hcgnet_a1", block_depths=[8, 8, 8], growth_rates=(12, 24, 36))) == 1_065_301


@pytest.mark.parametrize("feature_cls,wrapper", [
    ("list", "FeatureListNet"), ("dict", "FeatureDictNet"), ("hook", "FeatureHookNet"), ("fx", "FeatureGraphNet"),
    ("getter", "FeatureGetterNet"), ("Hooks", "FeatureHookNet"),
])
def test_every_feature_cls_timm_takes_gives_timms_wrapper_and_features(feature_cls, wrapper):
    """hcgnet.create_model takes timm's feature_cls names and wraps as timm.create_model does: the same class,
    the same maps, the model's in_chans, and a pretrained_cfg for a backbone (no classifier) that timm's
    resolve_data_config reads."""
    torch.manual_seed(0)
    ours = hcgnet.create_model("hcgnet_a1", features_only=True, feature_cls=feature_cls, out_indices=(1, 2)).eval()
    theirs = timm.create_model("hcgnet_a1", features_only=True, feature_cls=feature_cls, out_indices=(1, 2)).eval()
    assert type(ours).__name__ == type(theirs).__name__ == wrapper
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    a, b = (list(o.values()) if isinstance(o, dict) else o for o in (a, b))
    assert [tuple(t.shape) for t in a] == [(2, 252, 16, 16), (2, 414, 8, 8)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert ours.in_chans == theirs.in_chans == 3
    assert not {"num_classes", "classifier", "global_pool"} & set(ours.pretrained_cfg)
    assert {k: v for k, v in ours.pretrained_cfg.items()} == {k: theirs.pretrained_cfg[k] for k in ours.pretrained_cfg}
    assert timm.data.resolve_data_config({}, model=ours)["input_size"] == (3, 32, 32)


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
@pytest.mark.parametrize("name", ["hcgnet_a1", "densenet_bc_100_k12"])
def test_device_and_dtype_place_the_model_as_timms_arguments_do(factory, name):
    """timm.create_model(..., device="meta") builds shapes without memory; dtype= casts the model."""
    create = hcgnet.create_model if factory == "hcgnet" else timm.create_model
    meta = create(name, device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert [p.shape for p in meta.parameters()] == [p.shape for p in create(name).parameters()]
    half = create(name, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert "device" not in getattr(meta, "_model_args", {}) and "dtype" not in getattr(half, "_model_args", {})


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
def test_weights_for_a_model_on_the_meta_device_are_one_line(factory, tmp_path):
    create = hcgnet.create_model if factory == "hcgnet" else timm.create_model
    hcgnet.save_safetensors(hcgnet.create_model("hcgnet_a1"), tmp_path / "a1.safetensors")
    with pytest.raises(ModelSpecError, match="weights cannot be loaded into a model on the meta device"):
        if factory == "hcgnet":
            create("hcgnet_a1", checkpoint_path=str(tmp_path / "a1.safetensors"), device="meta")
        else:
            create("hcgnet_a1", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "a1.safetensors")),
                   device="meta")


def test_the_generic_entry_needs_depths_and_growth_rates():
    with pytest.raises(ModelSpecError, match="needs block_depths and growth_rates"):
        timm.create_model("hcgnet")


@pytest.mark.parametrize("name", ["hcgnet_b", "hcgnet_b.published_in1k", "hcgnet_c.published_in1k", "hcgnet_a1"])
def test_create_model_without_weights_gives_the_pretrained_cfg_timm_gives(name):
    """Built without weights, a variant with published weights describes them (their tag, licence and
    preprocessing), named with their tag or not, as timm.create_model does; only ``file`` is left out until a
    file is loaded (timm's is the bare file name, which hcgnet looks up in weights_dir)."""
    with torch.device("meta"):
        ours = hcgnet.create_model(name).pretrained_cfg
        theirs = timm.create_model(name).pretrained_cfg
    shared = set(ours) & set(theirs)
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}
    assert set(theirs) - set(ours) <= {"custom_load", "fixed_input_size", "file"}   # timm's dataclass defaults
    published = name.startswith(("hcgnet_b", "hcgnet_c"))
    assert ours.get("tag") == ("published_in1k" if published else None)
    assert (ours.get("license") == "other") == published


def test_a_folder_timms_save_for_hf_wrote_loads_through_hcgnet_as_through_timm(tmp_path, capsys):
    """timm's save_for_hf writes model.safetensors (no hcgnet metadata) and config.json naming the network:
    hcgnet.create_model("local-dir:...") and the commands given its model.safetensors read the network there."""
    from conftest import cli
    from hcgnet.inference import load_model

    spec = "HCGNet-(1,1,1)-(k=4,4,8)"
    torch.manual_seed(0)
    model = hcgnet.create_model(spec, num_classes=5, forget_gate=False).eval()
    folder = tmp_path / "my-net"
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for loaded in (hcgnet.create_model(f"local-dir:{folder}", pretrained=True),
                       timm.create_model(f"local-dir:{folder}", pretrained=True),
                       load_model(str(folder / "model.safetensors"))[0]):
            assert torch.equal(loaded.eval()(x), expected)
    code, out, err = cli(capsys, "info", "--json", folder / "model.safetensors")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["params"] == sum(p.numel() for p in model.parameters()) and "forget_gate=False" in row["spec"]
    with pytest.raises(HCGNetError, match="no config.json in"):
        hcgnet.create_model(f"local-dir:{tmp_path / 'nothing'}", pretrained=True)

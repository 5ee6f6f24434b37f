"""HCGNet + FPN in torchvision's Mask R-CNN / Faster R-CNN: taps, freezing, weights, counts, errors."""
import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.detection import FasterRCNN, MaskRCNN

import hcgnet
from hcgnet.cli import main
from hcgnet.complexity import count_params
from hcgnet.detection import build_detector, fasterrcnn_hcgnet, maskrcnn_hcgnet
from hcgnet.detection.backbone import hcgnet_fpn_backbone
from hcgnet.errors import CheckpointError, HCGNetError
from hcgnet.layers import FrozenBatchNorm
from hcgnet.models import save_safetensors
from hcgnet.models.checkpoints import _PUBLISHED_SMG_NAMES as PUBLISHED_SMG_NAMES, published_to_hcgnet_key

TINY = "HCGNet-(1,1,1)-(k=8,8,8)"  # 3 stages: taps at strides 4/8/16, then the max-pooled level
TINY4 = "HCGNet-(1,1,1,1)-(k=8,8,8,8)"
SMALL = dict(min_size=64, max_size=96)
PAPER_PARAMS = 32.1e6  # Table 4, HCGNet-B Mask R-CNN + FPN
PAPER_GMACS = 230.4


def _targets(n: int, h: int, w: int, seed: int = 0):
    """``n`` images of (h, w) with one box and its filled mask each."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        images.append(torch.rand(3, h, w, generator=g))
        x0, y0, x1, y1 = 8 + 4 * i, 10, w - 12, h - 8
        mask = torch.zeros(1, h, w, dtype=torch.uint8)
        mask[0, y0:y1, x0:x1] = 1
        targets.append(dict(boxes=torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
                            labels=torch.tensor([1 + i]), masks=mask))
    return images, targets


def test_hcgnet_b_mask_rcnn_has_the_papers_parameter_count():
    with torch.device("meta"):
        model = maskrcnn_hcgnet("hcgnet_b", num_classes=91)
    assert isinstance(model, MaskRCNN)
    assert abs(count_params(model) - PAPER_PARAMS) / PAPER_PARAMS < 0.02


def test_resnet50_baseline_is_torchvisions_maskrcnn_resnet50_fpn():
    with torch.device("meta"):
        model = build_detector("resnet50", trainable_stages=3, trained=True)
    assert count_params(model) == 44_401_393  # torchvision's documented num_params for maskrcnn_resnet50_fpn
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    trainable = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


def _norms_and_trainable(body):
    return ([type(m).__name__ for m in body.modules() if isinstance(m, (_BatchNorm, FrozenBatchNorm))],
            sorted(n for n, p in body.named_parameters() if p.requires_grad))


def test_an_untrained_resnet50_is_built_as_torchvision_builds_it_from_scratch():
    """The oracle is torchvision itself: maskrcnn_resnet50_fpn without any weights keeps ordinary BatchNorms and
    trains every layer, conv1 included."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    with torch.device("meta"):
        ours = build_detector("resnet50").backbone.body
        theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.body
    assert _norms_and_trainable(ours) == _norms_and_trainable(theirs)
    norms, trainable = _norms_and_trainable(ours)
    assert set(norms) == {"BatchNorm2d"} and "conv1.weight" in trainable and "bn1.weight" in trainable


def test_an_untrained_hcgnet_backbone_trains_every_layer_with_ordinary_batch_norms(single_thread):
    """Without ImageNet weights nothing is frozen: frozen random BatchNorms (mean 0, variance 1, weight 1, bias 0)
    would normalise nothing and a frozen random stem would feed noise to the stages."""
    torch.manual_seed(0)
    model = maskrcnn_hcgnet(TINY, num_classes=3, **SMALL).train()
    body = model.backbone.body
    assert not any(isinstance(m, FrozenBatchNorm) for m in body.modules())
    norms = [m for m in body.modules() if isinstance(m, _BatchNorm)]
    assert len(norms) > 20 and all(m.weight.requires_grad for m in norms)
    assert all(p.requires_grad for p in body.parameters())
    stem_mean = body.stem.norm0.running_mean.clone()
    images, targets = _targets(2, 64, 80)
    sum(model(images, targets).values()).backward()
    assert body.stem.conv0.weight.grad.abs().sum() > 0 and body.stem.norm0.weight.grad.abs().sum() > 0
    assert not torch.equal(body.stem.norm0.running_mean, stem_mean)  # statistics learnt from the data


def test_trainable_stages_is_refused_for_an_untrained_backbone():
    for model in (TINY, "resnet50"):
        with torch.device("meta"), pytest.raises(HCGNetError, match="without weights_backbone") as info:
            build_detector(model, trainable_stages=2)
        assert "\n" not in str(info.value)


def test_trainable_bn_affine_trains_scale_and_shift_outside_the_frozen_stages_only(single_thread):
    """The published mmdetection config (norm_eval with requires_grad BN, frozen_stages=1): statistics frozen
    everywhere, scale and shift trained in stages 1.., frozen in the stem and stage 0."""
    torch.manual_seed(0)
    model = maskrcnn_hcgnet(TINY4, num_classes=3, trained=True, bn_affine="trainable", **SMALL).train()
    body = model.backbone.body
    norms = {n: m for n, m in body.named_modules() if isinstance(m, FrozenBatchNorm)}
    assert norms and not any(isinstance(m, _BatchNorm) for m in body.modules())
    frozen_part = [n for n in norms if n.startswith(("stem.", "stages.0."))]
    trained_part = [n for n in norms if n not in frozen_part]
    assert frozen_part and trained_part
    assert all(not norms[n].weight.requires_grad and not norms[n].bias.requires_grad for n in frozen_part)
    assert all(norms[n].weight.requires_grad and norms[n].bias.requires_grad for n in trained_part)
    buffers = {k: v.clone() for k, v in body.named_buffers()}
    images, targets = _targets(2, 64, 80)
    sum(model(images, targets).values()).backward()
    assert body.stages[2].transition.squeeze.conv1x1.norm.weight.grad.abs().sum() > 0
    assert body.norm.bias.grad.abs().sum() > 0
    assert all(torch.equal(v, buffers[k]) for k, v in body.named_buffers())  # no statistic moved
    with torch.device("meta"):  # the default is torchvision's: nothing of a BatchNorm trains
        frozen = maskrcnn_hcgnet(TINY4, num_classes=3, trained=True)
    assert not any(p.requires_grad for m in frozen.backbone.body.modules() if isinstance(m, FrozenBatchNorm)
                   for p in m.parameters())


def test_hcgnet_b_fpn_taps_have_the_papers_channels_and_strides(single_thread):
    backbone = hcgnet_fpn_backbone("hcgnet_b").eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        taps = backbone.taps(x)
        raw = backbone.body.forward_intermediates(x, intermediates_only=True)
        levels = backbone(x)
    assert [tuple(t.shape) for t in taps.values()] == [
        (1, 160, 16, 24), (1, 368, 8, 12), (1, 952, 4, 6), (1, 1244, 2, 3)]
    # after a BN-ReLU: non-negative, unlike the raw hybrid-block outputs
    assert all(t.min() >= 0 for t in taps.values()) and all(r.min() < 0 for r in raw)
    assert list(levels) == ["0", "1", "2", "3", "pool"] and backbone.out_channels == 256
    assert [tuple(v.shape[1:]) for v in levels.values()] == [
        (256, 16, 24), (256, 8, 12), (256, 4, 6), (256, 2, 3), (256, 1, 2)]


def test_each_tap_goes_through_the_next_transitions_trained_batch_norm(single_thread):
    """Tap i = ReLU(BN(hybrid-block output i)) with the BatchNorm that opens transition i + 1, its statistics and
    affine weights set here to values far from 0/1; the last tap uses the network's final norm. The oracle
    writes the formula out with those hand-set tensors."""
    torch.manual_seed(0)
    backbone = hcgnet_fpn_backbone(TINY4, trained=True).eval()
    body = backbone.body
    g = torch.Generator().manual_seed(1)
    norms = [s.transition.squeeze.conv1x1.norm for s in body.stages[1:]] + [body.norm]
    hand = []
    with torch.no_grad():
        for norm in norms:
            n = norm.num_features
            values = dict(running_mean=torch.randn(n, generator=g), running_var=torch.rand(n, generator=g) * 3 + 0.5,
                          weight=torch.randn(n, generator=g), bias=torch.randn(n, generator=g))
            for name, value in values.items():
                getattr(norm, name).copy_(value)
            hand.append(values)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        raw = body.forward_intermediates(x, intermediates_only=True)   # the hybrid-block outputs, before any norm
        taps = backbone.taps(x)
    assert len(raw) == len(taps) == 4
    for i, (r, values) in enumerate(zip(raw, hand)):
        v = {k: t[None, :, None, None] for k, t in values.items()}
        expected = torch.relu((r - v["running_mean"]) / torch.sqrt(v["running_var"] + 1e-5) * v["weight"] + v["bias"])
        torch.testing.assert_close(taps[str(i)], expected, msg=f"tap {i}")
        assert not torch.allclose(taps[str(i)], torch.relu(r))       # more than a ReLU


def test_trainable_stages_freezes_the_stem_and_the_first_stages():
    with torch.device("meta"):
        backbone = hcgnet_fpn_backbone("hcgnet_b", trainable_stages=3, trained=True)
    body = backbone.body
    assert not any(p.requires_grad for p in body.stem.parameters())
    assert not any(p.requires_grad for p in body.stages[0].parameters())
    assert all(p.requires_grad for s in body.stages[1:] for p in s.parameters())
    assert all(p.requires_grad for p in backbone.fpn.parameters())
    norms = [m for m in body.modules() if isinstance(m, FrozenBatchNorm)]
    assert not any(isinstance(m, _BatchNorm) for m in body.modules())
    assert len({m.running_mean.dim() for m in norms}) == 1 and len(norms) > 100  # BN2d and the gates' BN1d alike


def test_a_three_stage_spec_gets_the_imagenet_stem_and_levels_to_match():
    with torch.device("meta"):
        model = maskrcnn_hcgnet(TINY, num_classes=3)
    assert model.backbone.strides == [4, 8, 16]
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 4  # 3 taps + the max-pooled level
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    assert model.roi_heads.mask_roi_pool.featmap_names == ["0", "1", "2"]


def test_one_training_step_trains_exactly_the_trainable_backbone(single_thread):
    torch.manual_seed(0)
    model = maskrcnn_hcgnet(TINY, num_classes=3, trainable_stages=2, trained=True, **SMALL).train()
    body = model.backbone.body
    buffers = {k: v.clone() for k, v in body.named_buffers()}
    images, targets = _targets(2, 64, 80)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    frozen = [*body.stem.parameters(), *body.stages[0].parameters()]
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert len(trainable) == len(list(model.backbone.parameters())) - len(frozen)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert body.stages[1].transition.squeeze.conv1x1.conv.weight.grad.abs().sum() > 0
    assert body.stages[2].block.layers[0].forget_gate.bottleneck.fc.weight.grad.abs().sum() > 0
    assert all(torch.equal(v, buffers[k]) for k, v in body.named_buffers())


@pytest.mark.parametrize("builder, spec", [(maskrcnn_hcgnet, TINY), (fasterrcnn_hcgnet, TINY4)])
def test_eval_mode_gives_torchvisions_outputs(single_thread, builder, spec):
    torch.manual_seed(0)
    model = builder(spec, num_classes=4, box_score_thresh=0.0, box_detections_per_img=5, **SMALL).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90), torch.rand(3, 90, 60)])
    assert isinstance(out, list) and len(out) == 2
    for o, (h, w) in zip(out, ((70, 90), (90, 60))):
        n = len(o["boxes"])
        assert 0 < n <= 5 and o["boxes"].shape == (n, 4) and o["labels"].shape == o["scores"].shape == (n,)
        assert ((o["labels"] >= 1) & (o["labels"] < 4)).all()
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
        if builder is maskrcnn_hcgnet:
            assert o["masks"].shape == (n, 1, h, w)
        else:
            assert "masks" not in o
    assert isinstance(model, MaskRCNN if builder is maskrcnn_hcgnet else FasterRCNN)


def test_weights_backbone_loads_an_imagenet_checkpoint_without_its_classifier(tmp_path):
    torch.manual_seed(1)
    source = hcgnet.create_model(TINY, stem="imagenet", num_classes=7)
    with torch.no_grad():
        source.stem.norm0.running_mean.uniform_(0.5, 1.0)
    path = tmp_path / "tiny.safetensors"
    save_safetensors(source, path)
    detector = build_detector(TINY, "box", num_classes=3, weights_backbone=str(path), **SMALL)
    body = detector.backbone.body
    conv = "stages.1.block.layers.0.squeeze.conv1x1.conv.weight"
    assert torch.equal(body.state_dict()[conv], source.state_dict()[conv])
    assert torch.equal(body.stem.norm0.running_mean, source.stem.norm0.running_mean)
    assert not any(k.startswith("classifier.") for k in body.state_dict())
    # a run's own .pt ({'model': state_dict, ...}) is read by the same machinery
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    again = build_detector(TINY, "box", num_classes=3, weights_backbone=str(tmp_path / "best.pt"), **SMALL)
    assert torch.equal(again.backbone.body.state_dict()[conv], source.state_dict()[conv])


def _published_key(key: str) -> str:
    """hcgnet's name -> the published implementation's (the inverse of hcgnet's converter, for this test)."""
    names = {v: k for k, v in PUBLISHED_SMG_NAMES.items()}
    parts = key.split(".")
    if parts[0] == "stem":
        return "features." + ".".join(parts[1:])
    if parts[0] == "norm":
        return "features.norm5." + parts[1]
    if parts[2] == "transition":
        inner = ".".join(parts[3:])
        ours = next(n for n in names if inner.startswith(n + "."))
        return f"features.transition{parts[1]}.{names[ours]}{inner[len(ours):]}"
    inner = ".".join(parts[5:])
    ours = next(n for n in names if inner.startswith(n + "."))
    return f"features.hybridblock{int(parts[1]) + 1}.SMG{int(parts[4]) + 1}.{names[ours]}{inner[len(ours):]}"


def test_weights_backbone_reads_a_published_format_checkpoint(tmp_path):
    torch.manual_seed(2)
    source = hcgnet.create_model(TINY4, num_classes=6)
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("classifier."):
            state[key] = value
            continue
        published = _published_key(key)
        assert published_to_hcgnet_key(published) == key
        # the published gates store their fully connected layers as 1x1 convolutions
        state["module." + published] = value[:, :, None, None] if value.dim() == 2 else value
    torch.save({"net": state, "acc": 0.5, "epoch": 1}, tmp_path / "published.pth.tar")
    detector = build_detector(TINY4, "box", num_classes=3, weights_backbone=str(tmp_path / "published.pth.tar"))
    body = detector.backbone.body.state_dict()
    fc = "stages.2.block.layers.0.update_gate.bottleneck.fc.weight"
    assert torch.equal(body[fc], source.state_dict()[fc])
    assert torch.equal(body["stages.3.transition.squeeze.conv1x1.norm.running_var"],
                       source.state_dict()["stages.3.transition.squeeze.conv1x1.norm.running_var"])


@pytest.mark.parametrize("trained", [False, True])
def test_a_detectors_state_dict_loads_back_into_the_same_build(trained):
    """Every tensor is set to values written here (not taken from a model), saved, and read back strictly into a
    fresh build (for an untrained one also into the frozen build detect eval uses): each must hold them."""
    model = maskrcnn_hcgnet(TINY, num_classes=3, trained=trained, **SMALL)
    state = model.state_dict()
    expected = {k: (torch.full_like(v, i + 1) if v.dtype == torch.long
                    else torch.linspace(0.5, 1.5, v.numel(), dtype=v.dtype).reshape(v.shape) + i)
                for i, (k, v) in enumerate(sorted(state.items()))}
    for target_trained in {trained, True}:
        again = maskrcnn_hcgnet(TINY, num_classes=3, trained=target_trained, **SMALL)
        again.load_state_dict(expected, strict=True)
        loaded = again.state_dict()
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="hcgnet_z"), "unknown model"),
    (dict(model="resnet18"), "timm model"),
    (dict(model="hcgnet_b", trainable_stages=5, trained=True), "trainable_stages must be 0..4"),
    (dict(model=TINY, trainable_stages=-1, trained=True), "trainable_stages must be 0..3"),
    (dict(model="resnet50", trainable_stages=5, trained=True), "trainable_stages must be 0..4"),
    (dict(model="hcgnet_b", trained=True, bn_affine="learnt"), "bn_affine must be"),
    (dict(model="hcgnet_b", task="segment"), "unknown detection task"),
    (dict(model="hcgnet_b", num_classes=1), "2 or more"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with torch.device("meta"), pytest.raises(HCGNetError, match=match) as info:
        build_detector(**kwargs)
    assert "\n" not in str(info.value)


def test_a_cifar_stem_checkpoint_is_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="has the CIFAR stem.*needs the ImageNet stem") as info:
        build_detector("hcgnet_a1", weights_backbone="tests/fixtures/cifar_A1.official.pth.tar")
    assert "\n" not in str(info.value)
    # hcgnet's own classifier with the CIFAR stem, as hcgnet train writes it: the stem rule, not a shape mismatch
    path = tmp_path / "cifar_stem.safetensors"
    save_safetensors(hcgnet.create_model(TINY4, stem="cifar", num_classes=10), path)
    with pytest.raises(CheckpointError, match="has the CIFAR stem") as info:
        build_detector(TINY4, weights_backbone=str(path))
    assert "\n" not in str(info.value)


def test_info_detection_reports_params_and_macs_beside_the_paper(capsys):
    assert main(["info", "--detection", "hcgnet_b", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert abs(row["params"] - PAPER_PARAMS) / PAPER_PARAMS < 0.02 and row["paper_params"] == "32.1M"
    assert row["network_input"] == "800x1344" and row["paper_gmacs"] == "230.4G"
    parts = row["gmacs_by_part"]
    # The heads by hand (91 classes): box head over 1000 RoIs of 256x7x7 (fc6, fc7, classes, 4 box coordinates per
    # class), mask head over 100 RoIs of 256x14x14 (four 3x3 convs, a 2x2 stride-2 deconv, 1x1 logits at 28x28),
    # RPN head (3x3 conv + 3 objectness + 12 box outputs) at every level of 800x1344, pooled level included.
    box = 1000 * (256 * 49 * 1024 + 1024 * 1024 + 1024 * (91 + 4 * 91))
    mask = 100 * (4 * 196 * 256 * 256 * 9 + 196 * 256 * 256 * 4 + 784 * 256 * 91)
    positions = 200 * 336 + 100 * 168 + 50 * 84 + 25 * 42 + 13 * 21
    rpn = positions * 256 * (256 * 9 + 3 + 12)
    assert parts["box_head"] * 1e9 == pytest.approx(box, rel=1e-9)
    assert parts["mask_head"] * 1e9 == pytest.approx(mask, rel=1e-9)
    assert parts["rpn_head"] * 1e9 == pytest.approx(rpn, rel=1e-9)
    assert row["gmacs"] == pytest.approx(sum(parts.values()))
    # README "Detection models in Python": norms, activations etc. are not counted, hence ~4% below the paper
    assert 0.94 < row["gmacs"] / PAPER_GMACS < 1.0


def test_info_detection_counts_at_the_image_size_given(capsys):
    """At --image-size 400x600 the network sees 416x608 (padded to 32), not 800 px: the RPN head by hand at
    every level of 416x608 (strides 4..64)."""
    assert main(["info", "--detection", "hcgnet_b", "--image-size", "400x600", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["image"] == "400x600" and row["network_input"] == "416x608" and row["paper_gmacs"] is None
    positions = 104 * 152 + 52 * 76 + 26 * 38 + 13 * 19 + 7 * 10
    assert row["gmacs_by_part"]["rpn_head"] * 1e9 == pytest.approx(positions * 256 * (256 * 9 + 3 + 12), rel=1e-9)


def test_info_detection_bad_input_exits_2_with_one_line(capsys):
    assert main(["info", "--detection", "hcgnet_b", "--image-size", "800"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hcgnet: error: ") and err.count("\n") == 1
    assert main(["info", "--image-size", "800x800"]) == 2


def test_a_detector_trains_on_a_batch_of_one_image(single_thread):
    torch.manual_seed(0)
    model = fasterrcnn_hcgnet(TINY4, num_classes=3, trained=True, **SMALL).train()  # frozen norms: as fine-tuned
    images, targets = _targets(1, 64, 80)
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())

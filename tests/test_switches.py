"""The paper's design claims as switches of the one network (README "Design switches"): each switch changes what
it says and nothing else, bad values are one-line errors, and a switched network traces, recomputes and is
rebuilt from its checkpoint like the paper's."""
import json

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor

import hcgnet
from hcgnet.complexity import count_params
from hcgnet.errors import ModelSpecError
from hcgnet.layers import SMGModule
from hcgnet.layers.gates import AverageContext, ForgetGate, UpdateGate
from hcgnet.models.checkpoints import save_safetensors

TINY = "HCGNet-(2,2,2)-(k=8,8,8)"  # CIFAR stem, three stages, two modules each


def _tiny(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return hcgnet.create_model(TINY, num_classes=4, **kwargs)


def _smgs(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, SMGModule)]


def _block_smgs(model: nn.Module):
    return [layer for stage in model.stages for layer in stage.block.layers]


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine weights, so that an eval-mode oracle sees every term."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


# ------------------------------------------------------------------------------------------------ gates


def test_forget_gate_off_has_no_forget_gate_and_adds_the_squeezed_map_with_weight_1(single_thread):
    model = _tiny(forget_gate=False).eval()
    assert not any("forget_gate" in name for name, _ in model.named_parameters())
    assert not any(isinstance(m, ForgetGate) for m in model.modules())
    assert any(isinstance(m, UpdateGate) for m in model.modules())  # only the forget gate goes
    _randomise_norms(model)
    smg = model.stages[1].block.layers[1]
    x = torch.randn(2, smg.squeeze.conv1x1.conv.in_channels, 8, 8)
    with torch.no_grad():
        squeezed = smg.squeeze(x)
        a, b = smg.excite(squeezed)
        expected = squeezed + smg.update_gate(a, b)
        torch.testing.assert_close(smg(x), expected)
    # the paper's module differs exactly by the forget gate's decay of the same squeezed map
    paper = _tiny().eval()
    assert count_params(paper) - count_params(model) == sum(
        count_params(m) for m in paper.modules() if isinstance(m, ForgetGate))


def test_update_gate_off_is_the_mean_of_the_branches_global_average_pools(single_thread):
    model = _tiny(update_gate=False).eval()
    assert not any("update_gate" in name for name, _ in model.named_parameters())
    assert all(isinstance(m.update_gate, AverageContext) for m in _smgs(model))
    assert all(isinstance(m.forget_gate, ForgetGate) for m in _smgs(model))
    _randomise_norms(model)
    smg = model.stages[0].block.layers[1]
    x = torch.randn(3, smg.squeeze.conv1x1.conv.in_channels, 6, 10)
    with torch.no_grad():
        squeezed = smg.squeeze(x)
        a, b = smg.excite(squeezed)
        # hand oracle: (GAP(a) + GAP(b)) / 2 at every position, plus the forget-gated squeezed map
        v = (F.adaptive_avg_pool2d(a, 1) + F.adaptive_avg_pool2d(b, 1)) / 2
        torch.testing.assert_close(smg(x), v + smg.forget_gate(squeezed))
    # AverageContext is the update gate at its neutral values: constant attention scores, equal branch scores
    gate = UpdateGate(8).eval()
    with torch.no_grad():
        for p in gate.parameters():
            p.zero_()
        a, b = torch.randn(2, 2, 8, 5, 7).unbind(0)
        torch.testing.assert_close(gate(a, b), AverageContext()(a, b))


@pytest.mark.parametrize("act, cls", [("tanh", nn.Tanh), ("relu", nn.ReLU), ("sigmoid", nn.Sigmoid)])
def test_gate_act_sets_every_gate_activation(single_thread, act, cls):
    model = _tiny(gate_act=act)
    bottlenecks = [m.bottleneck for m in model.modules() if isinstance(m, (ForgetGate, UpdateGate))]
    assert len(bottlenecks) == 2 * (6 + 2)  # two gates in each of 6 block modules and 2 transitions
    assert all(type(b.act) is cls for b in bottlenecks)
    assert model.switches["gate_act"] == act


def test_wide_branch_5x5_is_a_real_depthwise_5x5(single_thread):
    model = _tiny(wide_branch="5x5").eval()
    convs = [m.excite.conv5x5.conv for m in _smgs(model)]
    assert len(convs) == 8 and all(m.excite.conv3x3_dilated is None for m in _smgs(model))
    for conv in convs:
        c = conv.in_channels
        assert (conv.kernel_size, conv.dilation, conv.padding, conv.groups, conv.out_channels) == (
            (5, 5), (1, 1), (2, 2), c, c)
    assert not any(isinstance(m, nn.Conv2d) and m.dilation != (1, 1) for m in model.modules())
    # a depthwise 5x5 "same" conv, checked against an explicit sum over the 25 taps
    conv = convs[0]
    x = torch.randn(1, conv.in_channels, 7, 9)
    padded = F.pad(x, (2, 2, 2, 2))
    expected = sum(padded[:, :, i:i + 7, j:j + 9] * conv.weight[:, 0, i, j][None, :, None, None]
                   for i in range(5) for j in range(5))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ connectivity


def test_dense_connectivity_drops_the_local_residual_in_blocks_only(single_thread):
    model = _tiny(connectivity="dense").eval()
    _randomise_norms(model)
    blocks = _block_smgs(model)
    assert all(m.forget_gate is None for m in blocks)  # the forget gate sits on the residual removed
    assert all(isinstance(stage.transition.forget_gate, ForgetGate) for stage in model.stages[1:])
    smg = blocks[3]
    x = torch.randn(2, smg.squeeze.conv1x1.conv.in_channels, 6, 6)
    with torch.no_grad():
        squeezed = smg.squeeze(x)
        v = smg.update_gate(*smg.excite(squeezed))
        out = smg(x)
    assert out.shape == squeezed.shape
    torch.testing.assert_close(out, v.expand_as(squeezed))
    # still dense: each block concatenates (widths grow by k per module as in the hybrid network)
    hybrid = _tiny()
    assert [s.block.out_channels for s in model.stages] == [s.block.out_channels for s in hybrid.stages]


def test_residual_connectivity_adds_at_a_constant_width(single_thread):
    model = _tiny(connectivity="residual").eval()
    _randomise_norms(model)
    widths = model.switches["residual_widths"]
    assert model.stem[0].out_channels == widths[0]
    for stage, width in zip(model.stages, widths):
        assert stage.block.out_channels == width
        for smg in stage.block.layers:
            assert smg.squeeze.conv1x1.conv.in_channels == width and smg.excite.conv3x3.conv.out_channels == width
        if isinstance(stage.transition, SMGModule):
            assert stage.transition.excite.conv3x3.conv.out_channels == width
    # no concatenation inside blocks: the traced graph has no cat node there
    graph = torch.fx.symbolic_trace(model).graph
    cats = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.cat]
    assert cats == []
    # each module adds its output to its input
    block = model.stages[1].block
    x = torch.randn(2, widths[1], 8, 8)
    with torch.no_grad():
        expected = x
        for smg in block.layers:
            expected = expected + smg(expected)
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("name", ["hcgnet_a1", "hcgnet_a2"])
def test_residual_widths_keep_the_hybrid_parameter_count_within_5_percent(name):
    with torch.device("meta"):
        hybrid = hcgnet.create_model(name)
        residual = hcgnet.create_model(name, connectivity="residual")
    assert abs(count_params(residual) / count_params(hybrid) - 1) <= 0.05
    widths = residual.switches["residual_widths"]
    assert all(w % 4 == 0 for w in widths) and list(widths) == sorted(widths)  # multiples of g; k's order
    assert not any(isinstance(s.block, hcgnet.models.HybridBlock) for s in residual.stages)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs, words", [
    (dict(connectivity="sparse"), "unknown connectivity 'sparse'; use one of hybrid, dense, residual"),
    (dict(gate_act="gelu"), "unknown gate_act 'gelu'; use one of tanh, relu, sigmoid"),
    (dict(wide_branch="7x7"), "unknown wide_branch '7x7'; use one of dilated, 5x5"),
    (dict(forget_gate="no"), "forget_gate must be true or false"),
    (dict(forget_gates=False), "HCGNet takes no argument 'forget_gates'"),
    (dict(residual_widths=[8, 8, 8]), "residual_widths is for connectivity='residual' only"),
])
def test_bad_switch_values_are_one_line_model_spec_errors(kwargs, words):
    with pytest.raises(ModelSpecError) as e:
        hcgnet.create_model(TINY, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_bad_switch_through_timm_is_a_model_spec_error():
    with pytest.raises(ModelSpecError, match="unknown connectivity"):
        timm.create_model("hcgnet_a1", connectivity="sparse")


# ------------------------------------------------------------------------------------------------ plumbing


def test_switches_work_through_timm_and_specs(single_thread):
    model = timm.create_model("hcgnet_a1", forget_gate=False, wide_branch="5x5")
    assert not any(isinstance(m, ForgetGate) for m in model.modules())
    assert model.switches["forget_gate"] is False and model.switches["wide_branch"] == "5x5"
    same = hcgnet.create_model("HCGNet-(8,8,8)-(k=12,24,36)", forget_gate=False, wide_branch="5x5")
    assert count_params(same) == count_params(model)
    assert model.switch_info() == "forget_gate=False, wide_branch=5x5"
    assert hcgnet.create_model(TINY).switch_info() == ""


SWITCHED = [dict(forget_gate=False), dict(update_gate=False), dict(gate_act="relu"), dict(wide_branch="5x5"),
            dict(connectivity="dense"), dict(connectivity="residual")]


@pytest.mark.parametrize("kwargs", SWITCHED, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_switches_survive_fx_tracing(single_thread, kwargs):
    model = _tiny(**kwargs).eval()
    _randomise_norms(model)
    extractor = create_feature_extractor(model, return_nodes={"stages.2": "features", "classifier": "logits"})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = extractor(x)
        final, features = model.forward_intermediates(x, indices=[2])
        torch.testing.assert_close(out["features"], features[0], rtol=0, atol=0)
        torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [dict(forget_gate=False, wide_branch="5x5"), dict(update_gate=False),
                                    dict(connectivity="dense"), dict(connectivity="residual")],
                         ids=["forget-off-5x5", "update-off", "dense", "residual"])
def test_memory_efficient_gives_the_same_gradients_with_a_switch_on(single_thread, kwargs):
    plain = _tiny(drop_rate=0.0, **kwargs).train()
    lean = _tiny(drop_rate=0.0, memory_efficient=True, **kwargs).train()
    lean.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for model in (plain, lean):
        F.cross_entropy(model(x), y).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, a), (_, b) in zip(plain.named_buffers(), lean.named_buffers()):
        torch.testing.assert_close(b, a, msg=name)


def test_checkpoint_metadata_rebuilds_the_switched_network(tmp_path, single_thread):
    from hcgnet.inference import convert_checkpoint, load_model

    model = _tiny(connectivity="residual", update_gate=False, gate_act="sigmoid").eval()
    _randomise_norms(model)
    path = tmp_path / "switched.safetensors"
    save_safetensors(model, path, {"model_name": TINY, "switches": json.dumps(model.switches)})
    loaded, meta = load_model(str(path))
    assert loaded.switches == model.switches
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    converted, written = convert_checkpoint(str(path), str(tmp_path / "converted.safetensors"))
    assert json.loads(written["switches"]) == model.switches
    assert hcgnet.create_model(TINY, checkpoint_path=str(tmp_path / "converted.safetensors")).switches == model.switches
    # without the record the file does not fit the paper's network: one-line error, not a wrong network
    bare = tmp_path / "bare.safetensors"
    save_safetensors(model.state_dict(), bare, {"model_name": TINY})   # a state dict: nothing recorded with it
    with pytest.raises(hcgnet.CheckpointError):
        hcgnet.create_model(TINY, checkpoint_path=str(bare))


def test_train_model_kwargs_option_reaches_the_model():
    from hcgnet.models.registry import parse_model_kwargs
    from hcgnet.training.config import make_config

    config = make_config(overrides=dict(data="cifar10", model_kwargs='{"forget_gate": false, "gate_act": "relu"}'))
    assert parse_model_kwargs(config.model_kwargs) == {"forget_gate": False, "gate_act": "relu"}
    for bad in ('{"forget_gate": ', "[1, 2]"):
        with pytest.raises(ModelSpecError):
            parse_model_kwargs(bad)


def test_a_run_with_model_kwargs_records_the_switches_and_loads_back_as_trained(tmp_path, single_thread):
    from conftest import make_image_folder
    from hcgnet.inference import load_model
    from hcgnet.training import make_config, trainer

    folder = make_image_folder(tmp_path / "images", classes=2, per_class=6)
    config = make_config(overrides=dict(
        model="HCGNet-(1,1,1)-(k=4,4,4)", data=f"imagefolder:{folder}", image_size=16, val_size=0.25,
        test_size=0.25, workers=0, output=str(tmp_path / "run"), epochs=1, batch_size=2, max_steps_per_epoch=1,
        model_kwargs='{"connectivity": "dense", "wide_branch": "5x5", "gate_act": "relu"}'))
    trainer.fit(config, log=lambda line: None)
    for name in ("final.safetensors", "last.pt"):
        model, meta = load_model(str(tmp_path / "run" / name))
        assert json.loads(meta["switches"])["connectivity"] == "dense"
        assert (model.switches["wide_branch"], model.switches["gate_act"]) == ("5x5", "relu")
        assert all(m.forget_gate is None for m in _block_smgs(model))


def test_info_counts_a_switched_network(capsys):
    from hcgnet.cli import main

    code = main(["info", "--json", "hcgnet_a1", "--model-kwargs", '{"wide_branch": "5x5", "forget_gate": false}'])
    row = json.loads(capsys.readouterr().out)[0]
    assert code == 0 and row["spec"] == "HCGNet-(8,8,8)-(k=12,24,36) [forget_gate=False, wide_branch=5x5]"
    assert row["published_params"] is None and row["paper_params"] is None and row["paper_gmacs"] is None
    # by hand from the paper's 1,065,301: a 5x5 depthwise kernel has 16 weights per channel more than a 3x3, and
    # a forget gate of C channels (r = 2 in blocks, 4 in transitions) has score conv C + 1, FC C*h + h, BN 2h,
    # expand h*C + C parameters, h = C / r
    with torch.device("meta"):
        smgs = _smgs(hcgnet.create_model("hcgnet_a1"))
    extra = 0
    for smg in smgs:
        c = smg.excite.conv3x3.conv.out_channels
        h = c // (4 if smg.squeeze.conv3x3.conv.stride == (2, 2) else 2)  # transitions: stride 2, r_f = 4
        extra += 16 * c - ((c + 1) + (c * h + h) + 2 * h + (h * c + c))
    assert row["params"] == 1_065_301 + extra
    assert main(["info", "hcgnet_a1", "--model-kwargs", '{"connectivity": "sparse"}']) == 2
    err = capsys.readouterr().err
    assert "unknown connectivity 'sparse'" in err and err.count("\n") == 1

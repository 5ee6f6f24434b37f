"""The networks: exact published sizes, gradients, any input size, timm conventions, export."""
import pytest
import timm
import torch
from torch import nn

import hcgnet
from hcgnet import ModelSpecError
from hcgnet.complexity import count_macs, count_params
from hcgnet.layers import BatchOfOneError
from hcgnet.models import VARIANTS, HCGNet, Transition

# The published implementation's exact parameter counts and forward GMACs (shared/reference/README.md).
PUBLISHED = [
    ("hcgnet_a1", 10, 1_065_301, 0.154),
    ("hcgnet_a1", 100, 1_102_651, None),
    ("hcgnet_a2", 10, 3_069_149, 0.489),
    ("hcgnet_a2", 100, 3_133_679, None),
    ("hcgnet_a3", 10, 11_239_897, 1.956),
    ("hcgnet_a3", 100, 11_363_647, None),
    ("hcgnet_b", 1000, 12_845_501, 2.003),
    ("hcgnet_c", 1000, 42_153_208, 6.972),
]
# A non-square input each variant can take, small enough for 2 CPU cores.
SMALL_INPUT = {"cifar": (32, 24), "imagenet": (64, 96)}


def _meta_model(name, **kwargs):
    with torch.device("meta"):
        return hcgnet.create_model(name, **kwargs)


@pytest.mark.parametrize("name,classes,params,gmacs", PUBLISHED)
def test_sizes_equal_the_published_implementation(name, classes, params, gmacs):
    model = _meta_model(name, num_classes=classes)
    assert count_params(model) == params
    if gmacs is not None:
        macs = count_macs(model, VARIANTS[name].input_size)
        assert abs(macs / 1e9 - gmacs) / gmacs < 0.01


# The published implementation's multiply-adds, exactly: FlopCounterMode over its own model classes (eval, batch 1,
# the input size of each; measured 2026-12-06 from a clone of its repository). The reference's 3-decimal GMACs
# (0.154, 0.489, 1.956, 2.003, 6.972) round these. Its counter sees the gates' scoring 1x1 convolutions but not
# their weighted sums, which that code computes as elementwise products.
PUBLISHED_MACS = {"hcgnet_a1": 154_231_776, "hcgnet_a2": 488_603_776, "hcgnet_a3": 1_956_302_016,
                  "hcgnet_b": 2_002_776_044, "hcgnet_c": 6_971_626_636}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_multiply_adds_are_the_published_count_plus_the_weighted_sums_it_does_not_see(name):
    from hcgnet.layers import AttentionPool

    model = _meta_model(name)
    sums = []   # C x H x W per attention pool: its weighted sum over the positions
    hooks = [m.register_forward_pre_hook(lambda _, args: sums.append(args[0][0].numel()))
             for m in model.modules() if isinstance(m, AttentionPool)]
    total = count_macs(model, VARIANTS[name].input_size)
    for hook in hooks:
        hook.remove()
    assert total == PUBLISHED_MACS[name] + sum(sums)


def test_attention_pooling_counts_the_same_multiply_adds_in_either_form():
    """An attention pool is a 1x1 convolution scoring C channels at every position and a sum weighted over the
    positions: 2 x C x H x W multiply-adds, by hand. NCHW maps compute it as elementwise products (which torch's
    counter does not see), channels_last maps as matrix products (which it does): the count must not depend on
    it, for the pool alone and for a whole network."""
    from torch.utils.flop_counter import FlopCounterMode

    from hcgnet.layers import AttentionPool

    assert count_macs(AttentionPool(12), (12, 7, 5)) == 2 * 12 * 7 * 5
    model = hcgnet.create_model("HCGNet-(2,2,2)-(k=8,8,8)", num_classes=10, in_chans=1).eval()
    raw = {}
    for layout in (torch.contiguous_format, torch.channels_last):   # the stem's output follows the weights'
        model = model.to(memory_format=layout)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 1, 28, 28))
        raw[layout] = counter.get_total_flops()
    assert raw[torch.channels_last] > raw[torch.contiguous_format]   # the two forms ran, and torch sees only one
    assert count_macs(model, (1, 28, 28)) == count_macs(model.to(memory_format=torch.contiguous_format), (1, 28, 28))


def test_paper_figures_are_those_the_paper_prints():
    """Tables 2 and 3 of the paper (params / "FLOPs"); the published README's own GMACs kept apart."""
    paper = {name: (v.paper_params, v.paper_gmacs) for name, v in VARIANTS.items()}
    assert paper == {"hcgnet_a1": ("1.1M", "0.2"), "hcgnet_a2": ("3.1M", "0.5"), "hcgnet_a3": ("11.4M", "2.0"),
                     "hcgnet_b": ("12.9M", "2.0"), "hcgnet_c": ("42.2M", "7.1")}
    readme = {name: v.readme_gmacs for name, v in VARIANTS.items()}
    assert readme == {"hcgnet_a1": "0.16", "hcgnet_a2": "0.50", "hcgnet_a3": "1.99", "hcgnet_b": None, "hcgnet_c": "7.0"}


def test_stage_widths_match_the_detection_taps_of_hcgnet_b():
    model = _meta_model("hcgnet_b")
    assert [f["num_chs"] for f in model.feature_info] == [160, 368, 952, 1244]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


def test_transition_widths_follow_published_arithmetic():
    even = Transition(252)  # HCGNet-A1's second transition
    assert even.squeeze.conv1x1.conv.out_channels == 189 and even.out_channels == 126
    assert even.update_gate.bottleneck.fc.out_features == 63 and even.forget_gate.bottleneck.fc.out_features == 31
    odd = Transition(254)  # C = 127: in - (in - C) // 2 = 191, one more than floor(1.5 * 127)
    assert odd.out_channels == 127 and odd.squeeze.conv1x1.conv.out_channels == 191
    assert odd.squeeze.conv3x3.conv.groups == 1 and odd.squeeze.conv3x3.conv.stride == (2, 2)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_parameter_gets_a_gradient_on_a_non_square_input(name):
    torch.manual_seed(0)
    model = hcgnet.create_model(name, num_classes=7).train()
    x = torch.randn(2, 3, *SMALL_INPUT[VARIANTS[name].stem])
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([1, 5])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        if pname.endswith("score.bias"):
            # softmax over positions is shift-invariant: the scoring bias gets no gradient beyond
            # rounding (relative to its weight's gradient)
            weight_grad = model.get_parameter(pname[: -len("bias")] + "weight").grad
            assert p.grad.abs().max() <= 1e-4 * weight_grad.abs().max(), pname
        else:
            assert p.grad.abs().max() > 0, pname


@pytest.mark.parametrize("name", list(VARIANTS))
def test_batch_of_one_in_eval_and_a_clear_error_in_training(name):
    model = hcgnet.create_model(name).eval()
    h, w = SMALL_INPUT[VARIANTS[name].stem]
    with torch.no_grad():
        assert model(torch.randn(1, 3, w, h)).shape == (1, VARIANTS[name].num_classes)
    model.train()
    with pytest.raises(BatchOfOneError, match="batch size of 2 or more"):
        model(torch.randn(1, 3, h, w))


def test_batch_element_does_not_depend_on_the_rest_of_the_batch_in_eval():
    model = hcgnet.create_model("hcgnet_a1").eval()
    x = torch.randn(3, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]), atol=1e-5, rtol=1e-5)


def test_imagenet_variants_apply_dropout_before_the_classifier():
    model = hcgnet.create_model("hcgnet_b")
    assert model.head_drop.p == 0.1 and VARIANTS["hcgnet_a1"].drop_rate == 0.0
    feats = torch.ones(64, model.num_features, 7, 7)
    model.train()
    dropped = model.forward_head(feats, pre_logits=True)
    assert 0.05 < (dropped == 0).float().mean() < 0.15
    model.eval()
    assert torch.equal(model.forward_head(feats, pre_logits=True), torch.ones(64, model.num_features))


def test_spec_builds_the_same_network_as_the_variant():
    spec = hcgnet.create_model("HCGNet-(8,8,8)-(k=12,24,36)")
    a1 = hcgnet.create_model("hcgnet_a1")
    assert {k: v.shape for k, v in spec.state_dict().items()} == {k: v.shape for k, v in a1.state_dict().items()}
    b = _meta_model("HCGNet-(3,6,12,8)-(k=32,48,64,96)")
    assert count_params(b) == 12_845_501


def test_spec_stem_follows_block_count_unless_given():
    three = _meta_model("HCGNet-(2,2,2)-(k=8,8,8)")
    four = _meta_model("HCGNet-(1,1,1,1)-(k=8,8,8,8)")
    assert len(three.stem) == 1 and three.feature_info[-1]["reduction"] == 4 and three.num_classes == 10
    assert isinstance(four.stem.pool, nn.MaxPool2d) and four.feature_info[-1]["reduction"] == 32
    assert four.num_classes == 1000
    imagenet_three = _meta_model("HCGNet-(2,2,2)-(k=8,8,8)", stem="imagenet")
    assert imagenet_three.feature_info[-1]["reduction"] == 16


@pytest.mark.parametrize(
    "bad,message",
    [
        ("hcgnet_d", "unknown model"),
        ("resnet_nope", "unknown model"),  # neither HCGNet nor timm (timm names build timm baselines)
        ("HCGNet-(8,8,8)", "malformed spec"),
        ("HCGNet-(8,x,8)-(k=12,24,36)", "malformed spec"),
        ("HCGNet-(8,8)-(k=12,24,36)", "one growth rate per hybrid block"),
        ("HCGNet-(8,0,8)-(k=12,24,36)", "at least one SMG"),
        ("HCGNet-(8,8,8)-(k=12,22,36)", "multiple of the squeeze cell's group count 4"),
    ],
)
def test_bad_names_and_specs_are_one_line_errors(bad, message):
    with pytest.raises(ModelSpecError, match=message) as info:
        hcgnet.create_model(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"groups": 0}, "groups must be a whole number of 1 or more (the paper's 4), got 0"),
    ({"groups": 2.5}, "groups must be a whole number of 1 or more (the paper's 4), got 2.5"),
    ({"reduction": 0}, "reduction must be a whole number of 1 or more (the paper's 2), got 0"),
    ({"reduction": "2"}, "reduction must be a whole number of 1 or more (the paper's 2), got '2'"),
    ({"reduction": 1.5}, "reduction must be a whole number of 1 or more (the paper's 2), got 1.5"),
    ({"transition_reduction": -2}, "transition_reduction must be a whole number of 1 or more (the paper's 4), got -2"),
    # A1's narrowest gates sit over k = 12 channels (the first hybrid block), its transitions' over 60
    ({"reduction": 100}, "reduction 100 leaves a gate over 12 channels without hidden units; use a reduction of at "
                         "most 12"),
    ({"transition_reduction": 1000}, "reduction 1000 leaves a gate over 60 channels without hidden units"),
    ({"alpha": 0}, "alpha must be a number above 0 (the paper's 4), got 0"),
    ({"alpha": -1}, "alpha must be a number above 0 (the paper's 4), got -1"),
    ({"alpha": True}, "alpha must be a number above 0"),
    # floor(1.5 * 12) = 18 channels cannot feed a 3x3 conv in 4 groups
    ({"alpha": 1.5}, "alpha 1.5 makes the squeeze cell floor(1.5 x 12) = 18 channels wide, not a positive multiple "
                     "of groups (4)"),
    ({"compression": 0}, "compression must be in (0, 1] (the paper's 0.5), got 0"),
    ({"compression": 3}, "compression must be in (0, 1] (the paper's 0.5), got 3"),
    ({"drop_rate": 5}, "drop_rate must be in [0, 1)"),
    ({"drop_rate": -0.1}, "drop_rate must be in [0, 1)"),
])
def test_settings_the_network_cannot_be_built_with_are_one_line_errors(kwargs, message):
    """Out-of-range switches are refused in the argument's name before anything is built (they used to end in
    a ZeroDivisionError, an IndexError or torch's messages, or build a network of empty convolutions)."""
    with pytest.raises(ModelSpecError) as info:
        hcgnet.create_model("hcgnet_a1", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_settings_within_range_still_build():
    model = hcgnet.create_model("hcgnet_a1", alpha=2, groups=3, reduction=12, compression=1.0, transition_reduction=60)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ModelSpecError, match="did you mean hcgnet_a1"):
        hcgnet.create_model("hcgnet-a1")


def test_timm_creates_the_same_models():
    # the variants, and "hcgnet": any depth and width, the architecture a spec's saved config names
    assert sorted(timm.list_models("hcgnet*")) == sorted(hcgnet.list_models() + ["hcgnet"])
    with torch.device("meta"):
        for name in hcgnet.list_models():
            ours, theirs = hcgnet.create_model(name), timm.create_model(name)
            assert count_params(ours) == count_params(theirs)
            assert type(theirs) is HCGNet
    model = timm.create_model("hcgnet_a1", num_classes=100)
    assert model.classifier.out_features == 100
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("hcgnet_b"))
    assert cfg["input_size"] == (3, 224, 224)


def test_list_models_filters_and_tags_as_timm_lists_them():
    assert hcgnet.list_models() == ["hcgnet_a1", "hcgnet_a2", "hcgnet_a3", "hcgnet_b", "hcgnet_c"]
    assert hcgnet.list_models("hcgnet_a*") == ["hcgnet_a1", "hcgnet_a2", "hcgnet_a3"]
    assert hcgnet.list_models(["*_b", "*_c"]) == ["hcgnet_b", "hcgnet_c"]
    assert hcgnet.list_models(pretrained=True) == ["hcgnet_b.published_in1k", "hcgnet_c.published_in1k"]
    assert hcgnet.list_models("*_b", pretrained=True, include_tags=False) == ["hcgnet_b"]
    assert hcgnet.list_models("resnet*") == []
    # timm's own listing of the registered configs agrees (its generic "hcgnet" is not a variant)
    for args in [dict(), dict(pretrained=True), dict(include_tags=True), dict(pretrained=True, include_tags=False)]:
        theirs = [n for n in timm.list_models("hcgnet_*", **args)]
        assert hcgnet.list_models("hcgnet_*", **args) == theirs, args
    assert timm.list_pretrained("hcgnet*") == ["hcgnet_b.published_in1k", "hcgnet_c.published_in1k"]


@pytest.mark.parametrize("factory", ["hcgnet", "timm"])
@pytest.mark.parametrize("name,size", [("hcgnet_a1", (24, 40)), ("hcgnet_b", (96, 64))])
def test_features_only_channels_and_strides_match_feature_info(factory, name, size):
    create = hcgnet.create_model if factory == "hcgnet" else timm.create_model
    model = create(name, features_only=True).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        features = model(x)
    assert len(features) == len(model.feature_info.channels())
    for f, chs, red in zip(features, model.feature_info.channels(), model.feature_info.reduction()):
        assert f.shape == (2, chs, -(-size[0] // red), -(-size[1] // red))


def test_features_only_out_indices():
    model = hcgnet.create_model("hcgnet_b", features_only=True, out_indices=(1, 3)).eval()
    assert model.feature_info.channels() == [368, 1244]
    with torch.no_grad():
        assert [f.shape[1] for f in model(torch.randn(2, 3, 64, 64))] == [368, 1244]


def test_forward_intermediates_agree_with_forward():
    torch.manual_seed(0)
    model = hcgnet.create_model("hcgnet_a1").eval()
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == [120, 252, 414]
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two, inter[1:])
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], inter[0])
        kept = model.prune_intermediate_layers([1])
        assert kept == [1] and len(model.stages) == 2 and model.num_features == 252
        assert model(x).shape == (2, 252, 16, 12)  # no head left: the last kept stage's map


def test_head_conventions():
    model = hcgnet.create_model("hcgnet_a1").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 414)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
        model.reset_classifier(0)
        assert model(x).shape == (2, 414)
    headless = hcgnet.create_model("hcgnet_a1", num_classes=0, global_pool="")
    assert headless.eval()(x).shape == (2, 414, 8, 8)


def test_in_chans_and_gate_activation_options():
    model = hcgnet.create_model("hcgnet_a1", in_chans=1, gate_act=nn.ReLU).eval()
    assert model.stem.conv0.in_channels == 1
    assert isinstance(model.stages[0].block.layers[0].forget_gate.bottleneck.act, nn.ReLU)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_torchscript_gives_the_same_output():
    torch.manual_seed(0)
    model = hcgnet.create_model("HCGNet-(2,2,2)-(k=8,8,8)").eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=1e-5)


def test_torch_jit_trace_passes_its_own_check_and_gives_the_same_output():
    """jit.trace re-runs the trace to check it (without gradients): the convolutions' CPU training forms must
    not make the two runs differ, so a trace keeps the plain convolutions, as an export does."""
    torch.manual_seed(0)
    model = hcgnet.create_model("HCGNet-(2,2,2)-(k=8,8,8)").eval()
    x = torch.randn(2, 3, 20, 28)
    traced = torch.jit.trace(model, x)          # check_trace=True: a TracingCheckError if the graphs differ
    y = torch.randn(2, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(traced(y), model(y), atol=1e-5, rtol=1e-5)


def test_torch_export_with_dynamic_batch_and_size_gives_the_same_output():
    from torch.export import Dim, export

    torch.manual_seed(0)
    model = hcgnet.create_model("HCGNet-(2,2,2,2)-(k=8,8,8,8)").eval()
    # from 64 pixels up: a last stage of 1x1 positions is a special case export would have to guard
    dims = {"x": {0: Dim("batch", min=1, max=64), 2: Dim("h", min=64, max=1024), 3: Dim("w", min=64, max=1024)}}
    program = export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=dims)
    for shape in [(2, 3, 64, 64), (1, 3, 96, 160), (3, 3, 80, 72)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["hcgnet_a1", "HCGNet-(2,3,2,2)-(k=8,8,12,8)"])
def test_memory_efficient_mode_gives_the_same_outputs_gradients_and_statistics(name):
    torch.manual_seed(0)
    plain = hcgnet.create_model(name, drop_rate=0.0).train()  # no dropout: the two forwards draw no masks
    lean = hcgnet.create_model(name, drop_rate=0.0, memory_efficient=True).train()
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 40) if name == "hcgnet_a1" else torch.randn(4, 3, 64, 72)
    y = torch.tensor([0, 1, 2, 3])
    outputs = []
    for model in (plain, lean):
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    for (name_a, a), (_, b) in zip(plain.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name_a)
    # running statistics updated once per forward, not again when backward recomputes
    for (name_a, a), (_, b) in zip(plain.named_buffers(), lean.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name_a)
    # eval and scripting take the plain path
    plain.eval(), lean.eval()
    with torch.no_grad():
        torch.testing.assert_close(lean(x), plain(x))


def _saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one forward (each storage counted once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def test_memory_efficient_mode_stores_at_most_half_the_activations_of_hcgnet_a2():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    plain = _saved_activation_bytes(hcgnet.create_model("hcgnet_a2").train(), x)
    lean = _saved_activation_bytes(hcgnet.create_model("hcgnet_a2", memory_efficient=True).train(), x)
    assert lean <= 0.5 * plain, f"memory-efficient mode keeps {lean / plain:.2f}x the plain activations"

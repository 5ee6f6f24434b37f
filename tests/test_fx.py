"""HCGNet as an FX graph: torchvision's create_feature_extractor and timm's feature_cls="fx" give the eager
network's features, and the run-time choices (batch-of-one refusal, the bf16 fast backward, recomputation,
DropBlock) stay run-time choices in the traced graph."""
import copy

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import hcgnet
from hcgnet.errors import ModelSpecError
from hcgnet.layers import BatchOfOneError, DilatedDepthwiseConv2d, GateBottleneck
from hcgnet.layers.conv import _DilatedDepthwiseConvFn

TINY = "HCGNet-(1,1,1,1)-(k=8,8,8,8)"  # four stages, ImageNet stem: HCGNet-B's layout, fast to trace
STAGES = {f"stages.{i}": str(i) for i in range(4)}


@pytest.fixture(scope="module")
def hcgnet_b(single_thread):
    torch.manual_seed(0)
    return hcgnet.create_model("hcgnet_b").eval()


def _tiny(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    # no dropout before the classifier: training-mode outputs of two copies are then comparable
    return hcgnet.create_model(TINY, num_classes=5, drop_rate=0.0, **kwargs)


def _load_eager_weights(extractor: nn.Module, model: nn.Module) -> None:
    """The eager model's weights into an extractor built on its own (timm's factory); only the head is left."""
    result = extractor.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys
    assert {k.split(".")[0] for k in result.unexpected_keys} <= {"norm", "classifier"}


@pytest.mark.slow
def test_torchvision_feature_extractor_gives_hcgnet_b_stage_outputs(hcgnet_b):
    train_nodes, eval_nodes = get_graph_node_names(hcgnet_b)
    # The node names the README gives: every stage's last node (its hybrid block's concatenation) and the head's
    # BN-ReLU; the gates' checks and the dilated convolutions are single leaves.
    assert {"stages.3.block.cat_7", "act"} <= set(eval_nodes) and train_nodes == eval_nodes
    assert "stages.0.block.layers.0.excite.conv3x3_dilated.conv.dilated_depthwise_conv2d" in eval_nodes
    extractor = create_feature_extractor(hcgnet_b, return_nodes={**STAGES, "act": "head"})
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = extractor(x)
        final, expected = hcgnet_b.forward_intermediates(x)
    assert [out[str(i)].shape[1] for i in range(4)] == [160, 368, 952, 1244]
    for i in range(4):
        assert torch.equal(out[str(i)], expected[i])
    assert torch.equal(out["head"], final)


@pytest.mark.slow
@pytest.mark.parametrize("factory", [timm.create_model, hcgnet.create_model], ids=["timm", "hcgnet"])
def test_fx_features_only_gives_hcgnet_b_stage_outputs(hcgnet_b, factory):
    features = factory("hcgnet_b", features_only=True, feature_cls="fx", out_indices=(1, 3)).eval()
    assert type(features).__name__ == "FeatureGraphNet"
    assert features.feature_info.channels() == [368, 1244]
    _load_eager_weights(features.graph_module, hcgnet_b)
    x = torch.randn(1, 3, 64, 64)  # a batch of one is fine in eval mode
    with torch.no_grad():
        out = features(x)
        expected = hcgnet_b.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert len(out) == 2 and all(torch.equal(a, b) for a, b in zip(out, expected))


def test_fx_features_only_of_a_spec_and_a_bad_feature_cls(single_thread):
    model = _tiny().eval()
    features = hcgnet.create_model(TINY, features_only=True, feature_cls="fx").eval()
    _load_eager_weights(features.graph_module, model)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        out, expected = features(x), model.forward_intermediates(x, intermediates_only=True)
    assert len(out) == len(expected) == 4 and all(torch.equal(a, b) for a, b in zip(out, expected))
    with pytest.raises(ModelSpecError, match="unknown feature_cls 'graph'; use one of list, dict, hook, fx, getter"):
        hcgnet.create_model(TINY, features_only=True, feature_cls="graph")


class _Intermediates(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_intermediates(x, indices=[0, 2], stop_early=True)


def test_forward_intermediates_traces(single_thread):
    wrapper = _Intermediates(_tiny().eval())
    traced = torch.fx.symbolic_trace(wrapper)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        (last, features), (expected_last, expected) = traced(x), wrapper(x)
    assert torch.equal(last, expected_last) and len(features) == 2
    assert all(torch.equal(a, b) for a, b in zip(features, expected))


class _EvalNorm(nn.Module):
    """A frozen norm stand-in: a BatchNorm1d's eval-mode output in any mode, and itself not a BatchNorm."""

    def __init__(self, norm: nn.BatchNorm1d) -> None:
        super().__init__()
        self.inner = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.inner
        return F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)


def _freeze_gate_norms(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, GateBottleneck):
            module.norm = _EvalNorm(module.norm)
    return model


def test_traced_network_in_training_refuses_a_batch_of_one(single_thread):
    model = _tiny().train()
    extractor = create_feature_extractor(model, return_nodes={"stages.3": "out"})
    traced = torch.fx.symbolic_trace(model)
    one, two = torch.randn(1, 3, 64, 64), torch.randn(2, 3, 64, 64)
    for graph in (extractor, traced):
        with pytest.raises(BatchOfOneError, match="use a batch size of 2 or more"):
            graph(one)
    channels = model.feature_info[3]["num_chs"]
    assert extractor(two)["out"].shape == (2, channels, 2, 2)
    extractor.eval()  # torchvision's eval graph; the check reads the norms' mode at run time in both graphs
    traced.eval()
    with torch.no_grad():
        assert extractor(one)["out"].shape == (1, channels, 2, 2)
        assert traced(one).shape == (1, 5)


def test_a_gate_with_a_frozen_or_eval_mode_norm_accepts_a_batch_of_one():
    bottleneck = GateBottleneck(6, 3).train()
    z = torch.randn(1, 6)
    with pytest.raises(BatchOfOneError, match="batch of one"):
        bottleneck(z)
    bottleneck.norm.eval()  # a real BatchNorm, but not training: nothing to refuse
    assert bottleneck(z).shape == (1, 3)
    _freeze_gate_norms(bottleneck.train())
    assert bottleneck.training and bottleneck(z).shape == (1, 3)


def test_traced_network_with_frozen_gate_norms_trains_on_a_batch_of_one(single_thread):
    model = _freeze_gate_norms(_tiny()).train()
    reference = copy.deepcopy(model)
    extractor = create_feature_extractor(model, return_nodes={"classifier": "logits"})
    x = torch.randn(1, 3, 64, 64)
    logits = extractor(x)["logits"]
    logits.sum().backward()
    expected = reference(x)
    expected.sum().backward()
    assert torch.equal(logits, expected)
    gates = [(n, p) for n, p in model.named_parameters() if ".bottleneck.fc." in n]
    assert gates and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in gates)
    reference_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference_params[name].grad, rtol=0, atol=0)


def _fast_backward_calls(monkeypatch) -> list:
    calls = []
    apply = _DilatedDepthwiseConvFn.apply
    monkeypatch.setattr(_DilatedDepthwiseConvFn, "apply", lambda *args: calls.append(args[0].dtype) or apply(*args))
    return calls


def test_traced_bf16_cpu_training_takes_the_fast_backward(single_thread, monkeypatch):
    model = _tiny().train()
    reference = copy.deepcopy(model)
    traced = create_feature_extractor(model, return_nodes={"classifier": "logits"})  # traced in fp32
    dilated = sum(isinstance(m, DilatedDepthwiseConv2d) for m in model.modules())
    calls = _fast_backward_calls(monkeypatch)
    x = torch.randn(2, 3, 64, 64)
    traced(x)  # fp32: torch's own backward
    assert calls == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            traced(x)  # bf16 inference: nothing to differentiate
        assert calls == []
        logits = traced(x)["logits"]
        assert calls == [torch.bfloat16] * dilated and dilated == 7
        expected = reference(x)
    logits.float().sum().backward()
    expected.float().sum().backward()
    assert torch.equal(logits, expected)
    reference_params = dict(reference.named_parameters())
    conv = "stages.0.block.layers.0.excite.conv3x3_dilated.conv.weight"
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference_params[name].grad, rtol=0, atol=0, msg=name)
    assert model.get_parameter(conv).grad.abs().sum() > 0


def test_traced_memory_efficient_network_recomputes_with_the_same_gradients(single_thread):
    model = _tiny(memory_efficient=True).train()
    reference = copy.deepcopy(model)
    traced = create_feature_extractor(model, return_nodes={"classifier": "logits"})
    recomputed = [n for n in traced.graph.nodes if n.op == "call_function" and n.target.__name__ == "_recomputed"]
    assert len(recomputed) == 4 + 3  # one per SMG module in the hybrid blocks and one per transition
    x = torch.randn(2, 3, 64, 64)
    traced(x)["logits"].sum().backward()
    reference(x).sum().backward()
    reference_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference_params[name].grad, msg=name)
    reference_state = reference.state_dict()
    for name, value in model.state_dict().items():  # running statistics updated once, as in eager mode
        assert torch.equal(value, reference_state[name]), name


def test_traced_drop_block_reads_its_probability_at_run_time(single_thread):
    model = _tiny(drop_block_rate=0.1).train()
    traced = create_feature_extractor(model, return_nodes={"stages.1": "out"})
    x = torch.randn(2, 3, 64, 64)
    outputs = {}
    for p in (0.0, 0.5):
        for m in model.modules():  # as hcgnet's DropBlock schedule does during training
            if isinstance(m, timm.layers.DropBlock2d):
                m.drop_prob = p
        torch.manual_seed(1)
        expected = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)[0]
        torch.manual_seed(1)
        outputs[p] = traced(x)["out"]
        assert torch.equal(outputs[p], expected)
    assert not torch.equal(outputs[0.0], outputs[0.5])


def test_torchscript_of_a_training_network_still_refuses_a_batch_of_one(single_thread):
    scripted = torch.jit.script(hcgnet.create_model("HCGNet-(1)-(k=4)", num_classes=3).train())
    assert scripted(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(torch.jit.Error, match="batch of one"):
        scripted(torch.randn(1, 3, 8, 8))

"""benchmarks/shared_statistics.py: the shared-statistics formulation computes what the per-consumer BatchNorms do."""
from pathlib import Path

import torch
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shared_statistics.py"


def oracle(x, weights, biases, grads, eps=1e-5):
    """relu(gamma_c * (x - mean) / sqrt(var + eps) + beta_c) per consumer, written out in float64."""
    x = x.detach().double().requires_grad_(True)
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    outs = [torch.relu(w.double().view(1, -1, 1, 1) * (x - mean) / (var + eps).sqrt() + b.double().view(1, -1, 1, 1))
            for w, b in zip(weights, biases)]
    sum((o * g.double()).sum() for o, g in zip(outs, grads)).backward()
    return torch.stack(outs), x.grad


def test_both_ways_give_the_written_out_batch_norm(single_thread):
    script = load_script(SCRIPT)
    torch.manual_seed(0)
    per, shared = script.PerConsumer(6, 3), script.Shared(6, 3)
    script.copy_affine(per, shared)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    grads = [torch.randn(x.shape) for _ in range(3)]
    expected_out, expected_grad = oracle(x, [n.weight for n in per.norms], [n.bias for n in per.norms], grads)
    for model in (per, shared):
        xx = x.clone().requires_grad_(True)
        outs = model(xx)
        sum((o * g).sum() for o, g in zip(outs, grads)).backward()
        torch.testing.assert_close(torch.stack(outs).double(), expected_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xx.grad.double(), expected_grad, rtol=1e-4, atol=1e-5)
    assert max(script.check_equal(per, shared, x, grads).values()) < 1e-5

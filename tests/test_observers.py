"""hcgnet.observers: the histogram observer's range search on Python floats against torchao's own search (the
oracle: ``torchao.quantization.pt2e.observer.HistogramObserver._non_linear_param_search``), on histograms of
every shape the search meets: smooth, one-sided (after ReLU), a few spikes over noise, integer counts, huge
masses, cumulative sums equal to a bound. ``fixtures/histograms_at_float32_bounds.safetensors`` holds three histograms (a few spikes of 1e5-1e12
over noise; found by a seeded search) on which a search that compares its bounds unrounded stops at other bins
than torchao's, which compares them as float32."""
import pytest
import torch
from safetensors.torch import load_file
from torchao.quantization.pt2e import observer as torchao_observer
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

from conftest import FIXTURES
from hcgnet.observers import HistogramObserver, with_fast_histograms


def _histograms():
    g = torch.Generator().manual_seed(0)
    smooth = torch.exp(-torch.linspace(-4, 4, 2048) ** 2) * 1e4
    one_sided = smooth.clone()
    one_sided[:1024] = 0
    one_sided[1024] += 5e5                              # the zeros after a ReLU, all in one bin
    spikes = (torch.rand(2048, generator=g) < 0.2).float() * 3
    spikes[[5, 700, 2000]] = torch.tensor([4e3, 9e3, 2e3])
    cases = {"smooth": smooth, "one-sided": one_sided, "spikes": spikes,
             "integer": (torch.rand(2048, generator=g) ** 8 * 100).round(),
             "huge": torch.rand(2048, generator=g) * 1e9, "one bin": torch.zeros(2048).index_fill(0, torch.tensor([9]), 7.0)}
    # Ties: the first step's bounds, float32(1e-5 * 100000) = 1 and 99999, equal cumulative sums (bins 0-9 and
    # 2046), so "walk while cumulative < bound" and "while <= bound" part: torchao keeps bin 0 here.
    ties = torch.zeros(2048)
    ties[[0, 10, 2047]] = torch.tensor([1.0, 99998.0, 1.0])
    cases["ties"] = ties
    # Not counts (a negative entry): torchao's own search runs, since bisection needs nondecreasing sums.
    cases["negative"] = smooth.clone().index_fill(0, torch.tensor([1500]), -3e5)
    cases.update(load_file(FIXTURES / "histograms_at_float32_bounds.safetensors"))
    return cases


HISTOGRAMS = _histograms()


@pytest.mark.parametrize("name", sorted(HISTOGRAMS))
def test_the_range_search_stops_where_torchaos_does(name):
    o = HistogramObserver(eps=2 ** -12, dtype=torch.uint8, quant_min=0, quant_max=255)
    o.histogram = HISTOGRAMS[name].float()
    o.min_val, o.max_val = torch.tensor(-1.5), torch.tensor(2.5)
    expected = torchao_observer.HistogramObserver._non_linear_param_search(o)
    got = o._non_linear_param_search()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_observed_tensors_give_torchaos_quantization_parameters():
    torch.manual_seed(0)
    for x in (torch.randn(4, 8, 2, 2).relu(), torch.randn(1000) ** 3, torch.randint(0, 4, (256,)).float()):
        ours = HistogramObserver(eps=2 ** -12, dtype=torch.uint8, quant_min=0, quant_max=255)
        theirs = torchao_observer.HistogramObserver(eps=2 ** -12, dtype=torch.uint8, quant_min=0, quant_max=255)
        for part in x.chunk(2):
            ours(part), theirs(part)
        for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams()):
            assert torch.equal(a, b)


def test_the_x86_config_gets_the_fast_search_for_activations_only():
    config = get_default_x86_inductor_quantization_config()
    fast = with_fast_histograms(config)
    for spec in (fast.input_activation, fast.output_activation):
        made = spec.observer_or_fake_quant_ctr()
        assert type(made) is HistogramObserver and made.eps == torch.tensor(2 ** -12)
        assert (spec.dtype, spec.quant_min, spec.quant_max) == (torch.uint8, 0, 255)
    assert fast.weight == config.weight                # per-channel min-max, untouched
    assert type(config.input_activation.observer_or_fake_quant_ctr()) is torchao_observer.HistogramObserver

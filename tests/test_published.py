"""hcgnet.published and ``hcgnet bench --against-published``, on a stand-in for a clone of the published
repository (tests/published_standin: its layout, function and key names, its np.int; hcgnet's arithmetic)."""
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

from hcgnet.bench import BenchConfig, against_published
from hcgnet.cli import main
from hcgnet.errors import HCGNetError
from hcgnet.published import import_published, paired_models

STANDIN = str(Path(__file__).parent / "published_standin")


def test_paired_models_hold_the_same_weights_and_leave_no_modules_behind():
    published, ours = paired_models(STANDIN, "hcgnet_a1", 10, (16, 16))
    # the weights reached hcgnet through the published key names
    theirs = published.state_dict()
    assert any(k.startswith("features.HybridBlock1.SMG1.") for k in theirs)
    mine = ours.state_dict()
    assert len(mine) == len(theirs)
    for k, v in theirs.items():
        assert torch.equal(v, mine[published.to_ours[k]]), k
    x = torch.randn(2, 3, 16, 16)
    published.eval(), ours.eval()
    with torch.no_grad():
        assert torch.equal(published(x), ours(x))  # np.int in its forward runs: the shim is in place
    # the clone's top-level packages are not left to shadow modules of the same names
    assert not [m for m in sys.modules if m.split(".")[0] in ("models", "regularization")]


def test_a_different_network_is_refused_before_timing(monkeypatch):
    monkeypatch.setenv("HCGNET_STANDIN_PERTURB", "1")
    with pytest.raises(HCGNetError, match="disagree"):
        paired_models(STANDIN, "hcgnet_a1", 10, (16, 16))


def test_not_a_clone_is_refused(tmp_path):
    with pytest.raises(HCGNetError, match="git clone https://github.com/winycg/HCGNet"):
        import_published(str(tmp_path), "models.HCGNet_CIFAR")


def test_against_published_ratios_are_medians_of_per_round_ratios():
    configs = [BenchConfig("train"), BenchConfig("train", channels_last=True), BenchConfig("infer")]
    result = against_published(STANDIN, "hcgnet_a1", configs, batch=2, size=(16, 16), steps=1, warmup=0, rounds=3)
    rows = result["rows"]
    # the published code first within each mode, then the configurations asked, in order
    assert [(r["mode"], r["implementation"], r["channels_last"]) for r in rows] == [
        ("train", "published", False), ("train", "hcgnet", False), ("train", "hcgnet", True),
        ("infer", "published", False), ("infer", "hcgnet", False)]
    runs = result["runs"]
    assert len(runs) == 3 * len(rows)
    assert sorted({r["round"] for r in runs}) == [0, 1, 2]

    def per_round(row):
        return sorted((r for r in runs if all(r[k] == row[k] for k in ("mode", "implementation", "channels_last"))),
                      key=lambda r: r["round"])

    for row in rows:
        mine = per_round(row)
        published = per_round(next(r for r in rows if r["mode"] == row["mode"] and r["implementation"] == "published"))
        assert row["median_s"] == statistics.median(r["median_s"] for r in mine)
        expected = statistics.median(a["median_s"] / b["median_s"] for a, b in zip(mine, published))
        assert row["time_ratio"] == pytest.approx(expected)
        assert row["images_per_s"] == pytest.approx(2 / row["median_s"])
    assert all(r["time_ratio"] == 1 for r in rows if r["implementation"] == "published")
    # achieved GFLOP/s: HCGNet-A1's multiply-adds at 16x16 (a quarter of 32x32's 153.6M, by the reference
    # implementation's count), 2 FLOPs each, 3 passes in training
    assert result["flops_per_image"]["infer"] == pytest.approx(2 * 153.6e6 / 4, rel=0.05)
    assert result["flops_per_image"]["train"] == pytest.approx(3 * result["flops_per_image"]["infer"])
    assert result["peak_gflops"]["fp32"] > 0 and result["machine"]["threads"] >= 1
    # both implementations timed with freed memory kept, as hcgnet train runs (glibc here)
    assert result["allocator"] == "freed memory kept (glibc mallopt)"


def test_against_published_memory_is_the_worst_round_each_in_a_fresh_process():
    configs = [BenchConfig("train", memory_efficient=True), BenchConfig("infer")]
    result = against_published(STANDIN, "hcgnet_a1", configs, batch=2, size=(16, 16), steps=1, warmup=0, rounds=2,
                               memory=True)
    published, lean, *infer = result["rows"]
    assert [r["mode"] for r in infer] == ["infer", "infer"]
    assert not any("process_peak_rss_mb" in r for r in infer)  # inference is timed, not measured for memory
    # the published code as its own scripts run, hcgnet's as hcgnet train runs it (glibc here)
    assert published["memory_allocator"] == "the C library's defaults"
    assert lean["memory_allocator"] == "freed memory returned (glibc mallopt)"
    for row in (published, lean):
        peaks = row["process_peak_rss_mb_rounds"]
        assert len(peaks) == 2 and all(p > 200 for p in peaks)  # a whole process: torch alone is hundreds of MB
        assert row["process_peak_rss_mb"] == max(peaks)
        expected = max(a / b for a, b in zip(peaks, published["process_peak_rss_mb_rounds"]))
        assert row["rss_ratio"] == pytest.approx(expected)
    assert published["rss_ratio"] == 1


def test_cli_side_by_side_writes_json_and_refuses_mistakes(tmp_path, capsys):
    out = tmp_path / "side.json"
    code = main(["bench", "--model", "hcgnet_a1", "--against-published", STANDIN, "--modes", "infer,latency",
                 "--batch-size", "2", "--size", "16", "--steps", "1", "--warmup", "0", "--rounds", "1",
                 "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "published eager fp32" in text and "x published time" in text
    assert "hcgnet_a1, batch 2, batch 1, 16x16" in text  # inference at --batch-size, latency at 1
    result = json.loads(out.read_text())
    assert [r["mode"] for r in result["rows"]] == ["infer", "infer", "latency", "latency"]
    for argv, message in [
        (["--model", "resnet18", "--against-published", STANDIN], "the published implementation has"),
        (["--against-published", str(tmp_path)], "not a clone"),
        (["--memory"], "go with --against-published"),
        (["--against-published", STANDIN, "--batch-size", "2,4"], "one --batch-size"),
    ]:
        assert main(["bench", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err

"""hcgnet bench: every requested configuration measured, in order, with sane figures; bad requests refused."""
import json

from hcgnet.cli import main

TINY = "HCGNet-(1,1,1)-(k=8,8,8)"


def test_bench_measures_every_configuration(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", TINY, "--modes", "train,infer,latency", "--dtypes", "fp32,bf16",
                 "--channels-last", "both", "--memory-efficient", "both", "--steps", "2", "--warmup", "1",
                 "--batch-size", "4", "--size", "16", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())["results"]
    # train: 2 dtypes x 2 layouts x 2 memory modes; infer and latency: 2 x 2 (memory-efficient is training-only)
    assert len(results) == 8 + 4 + 4
    assert [r["mode"] for r in results] == ["train"] * 8 + ["infer"] * 4 + ["latency"] * 4
    assert {(r["dtype"], r["channels_last"], r["memory_efficient"]) for r in results if r["mode"] == "train"} == {
        (d, c, m) for d in ("fp32", "bf16") for c in (False, True) for m in (False, True)}
    for r in results:
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and r["steps"] == 2 and r["size"] == [16, 16]
        if r["mode"] == "latency":
            assert r["batch"] == 1 and abs(r["latency_ms"] - 1000 * r["median_s"]) < 1e-9
        else:
            assert r["batch"] == 4 and abs(r["images_per_s"] - 4 / r["median_s"]) < 1e-6
    assert len(capsys.readouterr().out.strip().splitlines()) == len(results)


def test_bench_refuses_what_cannot_run(capsys):
    assert main(["bench", "--model", TINY, "--dtypes", "fp16", "--device", "cpu"]) == 2
    assert "bf16" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--modes", "fly"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--batch-size", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err

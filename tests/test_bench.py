"""hcgnet bench: every requested configuration measured, in order, with sane figures; bad requests refused."""
import csv
import json
import subprocess
import sys
from pathlib import Path

from hcgnet.bench import benchmark
from hcgnet.cli import main

TINY = "HCGNet-(1,1,1)-(k=8,8,8)"
PROFILE_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "profile_step.py"


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
    # same weights, same batch: every training configuration starts at the fp32 loss and, after 3 SGD
    # steps, ends at it too (each to its tolerance)
    train = [r for r in results if r["mode"] == "train"]
    for key in ("first_loss", "final_loss"):
        reference = train[0][key]
        for r in train:
            assert abs(r[key] - reference) <= (1e-4 if r["dtype"] == "fp32" else 0.05) * reference, (key, r)
    assert train[0]["final_loss"] < train[0]["first_loss"]
    # the machine, then one line per configuration
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + len(results)


def test_bench_times_exported_runtimes_and_sweeps_batch_and_size(tmp_path, capsys):
    out, table, png = tmp_path / "bench.json", tmp_path / "bench.csv", tmp_path / "growth.png"
    code = main(["bench", "--model", TINY, "--modes", "train,infer", "--runtimes", "eager,onnx,pt2,openvino",
                 "--dtypes", "fp32,bf16", "--steps", "2", "--warmup", "1", "--batch-size", "2,4", "--size", "16",
                 "--json", str(out), "--csv", str(table), "--plot", str(png)])
    assert code == 0
    results = json.loads(out.read_text())["results"]
    # per (batch, size): train eager x 2 dtypes, infer eager x 2 dtypes, infer onnx, infer pt2,
    # infer openvino x 2 dtypes (its precision is set when it compiles; the other exports are fp32 graphs)
    assert len(results) == 2 * 8
    assert {(r["batch"], tuple(r["size"])) for r in results} == {(2, (16, 16)), (4, (16, 16))}
    exported = [r for r in results if r["runtime"] != "eager"]
    assert sorted((r["runtime"], r["dtype"]) for r in exported if r["batch"] == 2) == [
        ("onnx", "fp32"), ("openvino", "bf16"), ("openvino", "fp32"), ("pt2", "fp32")]
    assert all(r["mode"] == "infer" and r["images_per_s"] > 0 for r in exported)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == len(results) and rows[0]["size"] == "16x16"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_isolated_configurations_each_report_their_own_memory():
    configs = dict(modes=("train",), memory_efficient=(False, True), batch=8, size=(32, 32), steps=1, warmup=1)
    results = benchmark("HCGNet-(4,4,4)-(k=16,16,16)", isolate=True, **configs)
    plain, lean = results
    assert (plain["memory_efficient"], lean["memory_efficient"]) == (False, True)
    # each in a fresh process, so the second does not start from what the first left in the allocator
    assert 0 < lean["peak_memory_added_mb"] < plain["peak_memory_added_mb"]
    # under the allocator setting hcgnet train gives each (glibc here)
    assert plain["allocator"] == "freed memory kept (glibc mallopt)"
    assert lean["allocator"] == "freed memory returned (glibc mallopt)"


def test_bench_times_the_network_a_checkpoint_holds(tmp_path, capsys):
    """``--model FILE``: the checkpoint's network with its weights, input channels (1), classes (5) and the size
    it was trained at (20 px, from its data config; the spec's own is 32). Its classifier is all zeros, so every
    logit is 0 and the first training loss is ln 5, with or without recomputation; a network with other weights
    would not give it."""
    import math

    import torch

    import hcgnet

    model = hcgnet.create_model(TINY, num_classes=5, in_chans=1)
    torch.nn.init.zeros_(model.get_classifier().weight)
    config = {"name": "imagefolder", "input_size": [1, 20, 20], "mean": [0.5], "std": [0.25], "resize": None,
              "class_names": list("abcde")}
    path = tmp_path / "gray.safetensors"
    hcgnet.save_safetensors(model, path, {"model_name": TINY, "in_chans": "1", "data_config": json.dumps(config)})
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", str(path), "--modes", "train,infer", "--memory-efficient", "both",
                 "--steps", "1", "--warmup", "0", "--batch-size", "4", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["memory_efficient"]) for r in results] == [("train", False), ("train", True),
                                                                     ("infer", False)]
    assert all(r["size"] == [20, 20] for r in results)
    for r in results[:2]:
        assert abs(r["first_loss"] - math.log(5)) < 1e-6
    capsys.readouterr()
    assert main(["bench", "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert capsys.readouterr().err == f"hcgnet: error: checkpoint not found: {tmp_path / 'missing.safetensors'}\n"
    assert main(["bench", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"hcgnet: error: {tmp_path} is a folder, not a checkpoint file; e.g. ")


def test_bench_refuses_what_cannot_run(capsys):
    assert main(["bench", "--model", TINY, "--dtypes", "fp16", "--device", "cpu"]) == 2
    assert "bf16" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--modes", "fly"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--batch-size", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--runtimes", "tensorrt"]) == 2
    assert "unknown runtime" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--modes", "train", "--runtimes", "onnx,int8"]) == 2
    assert "the onnx, int8 runtimes time inference only; add --modes infer" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--modes", "train", "--runtimes", "openvino"]) == 2
    assert "the openvino runtime times inference only; add --modes infer" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--batch-size", "8,many"]) == 2
    assert "comma-separated whole numbers" in capsys.readouterr().err
    assert main(["bench", "--model", TINY, "--csv", "no/such/folder/out.csv"]) == 2
    assert "no/such/folder does not exist" in capsys.readouterr().err


def test_profile_script_attributes_the_step_to_operators_and_parts(tmp_path):
    """benchmarks/profile_step.py (the breakdown in BENCHMARKS.md) runs, and its parts are the network's."""
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, str(PROFILE_SCRIPT), "--model", TINY, "--batch", "2", "--size", "16",
                    "--steps", "1", "--json", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    ops = {r["op"] for r in result["operators"]}
    assert {"aten::convolution_backward", "aten::native_batch_norm"} <= ops
    parts = {r["part"] for r in result["parts"]}
    assert {"block.squeeze.conv1x1.conv", "block.update_gate", "block.forget_gate", "transition.squeeze.conv1x1.norm",
            "concatenation (aten::cat)"} <= parts
    assert 0 < sum(r["share"] for r in result["operators"]) <= 1.01


def test_profile_script_names_the_compiled_programs_kernels(tmp_path):
    """With --compile, the profile lists Inductor's own kernels by name (their sum on a line of its own) beside
    the oneDNN calls, and refuses training (module hooks and frozen weights are inference's)."""
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(PROFILE_SCRIPT), "--model", TINY, "--batch", "2", "--size", "16",
                           "--steps", "1", "--mode", "infer", "--compile", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    ops = [r["op"] for r in result["operators"]]
    assert any("cpp_fused_" in op for op in ops), ops
    assert any(op.startswith("mkldnn::") for op in ops), ops
    assert result["parts"] == [] and result["compile"] is True
    assert "all of Inductor's fused kernels" in proc.stdout
    refused = subprocess.run([sys.executable, str(PROFILE_SCRIPT), "--model", TINY, "--compile"], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "add --mode infer" in refused.stderr and "Traceback" not in refused.stderr
    unknown = subprocess.run([sys.executable, str(PROFILE_SCRIPT), "--model", "hcgnet_z"], capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown model 'hcgnet_z'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_bench_times_frozen_compiled_and_int8_inference(tmp_path, capsys):
    """``--compile`` in inference compiles as ``hcgnet eval --compile`` does (weights frozen); the ``int8``
    runtime is ``hcgnet eval --int8``'s PT2E program (its accuracy is tests/test_int8.py's business)."""
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", TINY, "--modes", "infer", "--runtimes", "eager,int8", "--compile", "on",
                 "--steps", "1", "--warmup", "1", "--batch-size", "4", "--size", "16", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())["results"]
    assert [(r["runtime"], r["compile"]) for r in results] == [("eager", True), ("int8", False)]
    assert all(r["images_per_s"] > 0 for r in results)
    assert "int8 pt2e compiled" in capsys.readouterr().out


def test_bench_refuses_int8_and_openvino_off_the_cpu():
    import pytest
    import torch

    from hcgnet.bench import check_request
    from hcgnet.errors import HCGNetError

    with pytest.raises(HCGNetError, match="the int8 runtime runs on the CPU"):
        check_request(torch.device("cuda"), ["infer"], ["fp32"], ["int8"], [4], 1, 0)
    with pytest.raises(HCGNetError, match="the openvino runtime runs on the CPU"):
        check_request(torch.device("cuda"), ["infer"], ["bf16"], ["openvino"], [4], 1, 0)


def test_bench_says_how_many_configurations_it_will_time_before_the_first(monkeypatch):
    """Train and infer at batches 4 and 8, latency once (batch 1 whatever the sweep): 5 rows, announced before
    the first is timed (a full model's first row takes minutes on 2 cores)."""
    from hcgnet import bench

    events = []
    monkeypatch.setattr(bench, "run_config", lambda *args: events.append(("timed", args[1].mode, args[2])) or {})
    bench.benchmark(TINY, ["train", "infer", "latency"], batches=[4, 8], steps=1, warmup=0, device="cpu",
                    start=lambda n: events.append(("start", n)))
    assert events[0] == ("start", 5) and len(events) == 6
    assert sorted(e[1:] for e in events[1:]) == sorted([("train", 4), ("train", 8), ("infer", 4), ("infer", 8),
                                                        ("latency", 4)])

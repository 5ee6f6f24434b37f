"""hcgnet bench: what it refuses before timing (output files, grids with nothing to run), what it says it left out,
what its files record (the provenance, in plain and side-by-side files alike) and how it prints figures (units,
spreads, speed-ups, noisy rows). Most tests time nothing: ``run_config`` is replaced by a stand-in whose figures
are set here, so the printed text can be checked against figures worked out by hand."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest

import hcgnet.bench
from hcgnet.cli import main

TINY = "HCGNet-(1,1,1)-(k=4,4,4)"
QUICK = ["--model", TINY, "--modes", "infer", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--size", "16"]
STANDIN = str(Path(__file__).parent / "published_standin")  # a clone's layout and names, hcgnet's arithmetic


@pytest.fixture
def no_timing(monkeypatch):
    """Fails the test if anything is timed (a refusal must come first)."""
    def timed(*args, **kwargs):
        raise AssertionError("timed before refusing")

    monkeypatch.setattr(hcgnet.bench, "run_config", timed)
    monkeypatch.setattr(hcgnet.bench, "against_published", timed)


def fake_timing(monkeypatch, min_s, median_s, max_s):
    """``run_config`` reporting the given step times (and 1 MB) for every configuration, without running it."""
    def run(name, cfg, batch, size, steps, warmup, *args, **kwargs):
        n = 1 if cfg.mode == "latency" else batch
        r = {**asdict(cfg), "batch": n, "size": list(size), "median_s": median_s, "min_s": min_s, "max_s": max_s,
             "first_step_s": max_s, "peak_memory_added_mb": 1.0, "process_peak_rss_mb": None, "steps": steps}
        r.update({"latency_ms": 1000 * median_s} if cfg.mode == "latency" else {"images_per_s": n / median_s})
        return r

    monkeypatch.setattr(hcgnet.bench, "run_config", run)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("other", ["--csv", "--plot"])
def test_two_outputs_naming_one_file_are_refused(other, tmp_path, capsys, no_timing):
    same = tmp_path / "x.png"
    assert main(["bench", *QUICK, "--json", str(same), other, str(same)]) == 2
    assert f"--json and {other} both name {same}; give each its own file" in one_line_error(capsys)
    assert not same.exists()
    # the same file by another spelling
    assert main(["bench", *QUICK, "--json", str(same), other, str(tmp_path / "." / "x.png")]) == 2
    assert "both name" in one_line_error(capsys)


@pytest.mark.parametrize("name, says", [("p.txt", "ends in .txt, which matplotlib cannot write"),
                                        ("growth", "has no extension")])
def test_a_plot_matplotlib_cannot_write_is_refused_first(name, says, tmp_path, capsys, no_timing):
    assert main(["bench", *QUICK, "--plot", str(tmp_path / name)]) == 2
    err = one_line_error(capsys)
    assert says in err and "name a .png file (or " in err and ".svg" in err and ".pdf" in err, err


def test_a_plot_in_another_format_is_written(tmp_path, monkeypatch, capsys):
    fake_timing(monkeypatch, 0.01, 0.01, 0.01)
    svg = tmp_path / "growth.svg"
    assert main(["bench", *QUICK, "--batch-size", "2,4", "--plot", str(svg)]) == 0, capsys.readouterr().err
    assert "<svg" in svg.read_text()


@pytest.mark.parametrize("argv, says", [
    (["--runtimes", "onnx", "--dtypes", "bf16"],
     "nothing to time: onnx runs fp32 only (its graph is fixed at export): not run; add fp32 to --dtypes to time "
     "it, or time bf16 in --runtimes openvino"),
    (["--memory-efficient", "on"],
     "nothing to time: --memory-efficient on is training's (recomputation in backward): eager infer not run; add "
     "--modes train, or --memory-efficient both"),
])
def test_a_grid_with_nothing_asked_that_can_run_is_refused(argv, says, capsys, no_timing):
    assert main(["bench", *QUICK, *argv]) == 2
    assert one_line_error(capsys) == f"hcgnet: error: {says}\n"


def test_side_by_side_refuses_a_grid_with_nothing_to_run_first(capsys, no_timing):
    assert main(["bench", "--model", "hcgnet_a1", "--against-published", STANDIN, "--modes", "infer", "--runtimes",
                 "onnx", "--dtypes", "bf16"]) == 2
    assert one_line_error(capsys).startswith("hcgnet: error: nothing to time: onnx runs fp32 only")


def test_what_the_grid_leaves_out_is_said_and_recorded(tmp_path, monkeypatch, capsys):
    fake_timing(monkeypatch, 0.01, 0.01, 0.01)
    out = tmp_path / "bench.json"
    assert main(["bench", *QUICK, "--modes", "train,infer", "--runtimes", "eager,onnx,pt2,openvino", "--dtypes",
                 "fp32,bf16", "--channels-last", "on", "--json", str(out)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: onnx, pt2, openvino time inference only: their train rows not run (--runtimes eager times training)",
        "note: onnx, pt2 run fp32 only (their graphs are fixed at export): onnx bf16, pt2 bf16 not run "
        "(openvino runs bf16)",
        "note: --channels-last applies to eager: onnx, pt2, openvino run their export as it is",
    ]
    saved = json.loads(out.read_text())
    assert saved["not_run"] == [n[len("note: "):] for n in notes]
    assert sorted((r["runtime"], r["dtype"]) for r in saved["results"] if r["runtime"] != "eager") == [
        ("onnx", "fp32"), ("openvino", "bf16"), ("openvino", "fp32"), ("pt2", "fp32")]


def test_plain_files_record_the_provenance_and_the_table_names_the_machine(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", *QUICK, "--modes", "infer,latency", "--json", str(out)]) == 0
    with open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"machine: {cpu} (") and "device cpu" in lines[0], lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["infer", "latency"]
    saved = json.loads(out.read_text())
    p = saved["provenance"]
    assert p["cpu"] == cpu and p["device"] == "cpu" and p["argv"] and p["date"] and p["threads"] >= 1
    assert (saved["steps"], saved["warmup"], saved["device"], saved["model"]) == (1, 0, "cpu", TINY)
    assert saved["machine"]["cpu"] == cpu and saved["date"] == p["date"][:10]
    # the keys an earlier file's readers use are still there
    assert len(saved["results"]) == 2 and saved["torch"] == p["torch"] and saved["threads"] == p["threads"]


def test_rows_give_the_spread_in_the_headline_unit_and_flag_noisy_ones(monkeypatch, capsys):
    # latency 1.0 ms median, steps from 0.9 to 1.1 ms
    fake_timing(monkeypatch, 0.0009, 0.001, 0.0011)
    assert main(["bench", *QUICK, "--modes", "latency"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "1.00 ms  (spread 0.900-1.10 ms)" in row and "noisy" not in row, row
    # batch 2 in 0.01 s: 200 img/s; the slowest step (0.025 s: 80 img/s) 2.5 times the fastest (0.01 s: 200 img/s)
    fake_timing(monkeypatch, 0.01, 0.01, 0.025)
    assert main(["bench", *QUICK]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "200.0 img/s  (spread 80.0-200.0 img/s)" in row, row
    assert row.endswith("noisy: the slowest step took 2.5x the fastest; was the machine busy?"), row


def test_side_by_side_records_the_provenance_and_labels_its_columns(tmp_path, capsys):
    out = tmp_path / "side.json"
    assert main(["bench", "--model", "hcgnet_a1", "--against-published", STANDIN, "--modes", "infer",
                 "--batch-size", "2", "--size", "16", "--steps", "1", "--warmup", "0", "--rounds", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("hcgnet_a1, batch 2, 16x16, 1 round;"))
    assert lines[at + 1].startswith("machine: ") and "device cpu" in lines[at + 1]
    header = lines[at + 2].split()
    assert "speed-up" in header and "GFLOP/s" in header and "matmul" in header and header[-1] == "peak"
    published = lines[at + 3]
    assert published.split()[:4] == ["infer", "published", "eager", "fp32"] and " 1.00x " in published, published
    assert "speed-up: the published time over this one's" in text
    saved = json.loads(out.read_text())
    assert saved["provenance"]["device"] == "cpu" and saved["provenance"]["argv"]
    assert saved["device"] == "cpu" and saved["not_run"] == [] and "rows" in saved and "machine" in saved
    assert all(abs(r["speedup"] * r["time_ratio"] - 1) < 1e-9 for r in saved["rows"])


def test_side_by_side_of_a_checkpoint_names_the_variant_to_pass(tmp_path, capsys, no_timing):
    import hcgnet

    path = tmp_path / "a1.safetensors"
    hcgnet.save_safetensors(hcgnet.create_model("hcgnet_a1", num_classes=10), path, {"model_name": "hcgnet_a1"})
    assert main(["bench", "--model", str(path), "--against-published", STANDIN]) == 2
    err = one_line_error(capsys)
    assert f"{path} holds hcgnet_a1" in err and "pass --model hcgnet_a1" in err, err
    other = tmp_path / "tiny.safetensors"
    hcgnet.save_safetensors(hcgnet.create_model(TINY, num_classes=10), other, {"model_name": TINY})
    assert main(["bench", "--model", str(other), "--against-published", STANDIN]) == 2
    err = one_line_error(capsys)
    assert f"{other} holds {TINY}" in err and "the published implementation has hcgnet_a1, " in err, err


def test_a_path_that_cannot_be_the_clone_says_what_it_is(tmp_path, capsys, no_timing):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a clone")
    assert main(["bench", "--against-published", str(a_file)]) == 2
    err = one_line_error(capsys)
    assert f"{a_file} is a file, not a clone" in err and f"git clone https://github.com/winycg/HCGNet {a_file}" \
        not in err and "into a new folder" in err, err
    # a folder holding other things: git clone cannot clone into it
    assert main(["bench", "--against-published", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "not a clone" in err and "models/HCGNet_CIFAR.py" in err and "into a new folder" in err, err
    assert f"HCGNet {tmp_path}\n" not in err
    # an empty folder, or none: clone there
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (empty, tmp_path / "none"):
        assert main(["bench", "--against-published", str(path)]) == 2
        assert f"git clone https://github.com/winycg/HCGNet {path}" in one_line_error(capsys)

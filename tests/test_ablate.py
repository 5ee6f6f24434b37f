"""hcgnet ablate: the grid and its refusals, paired seeds, the summary against the runs' own results.json
(statistics recomputed here with scipy as the oracle), a killed grid resumed, the executors."""
import csv
import importlib.util
import json
import math
import signal
import statistics

from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from conftest import make_image_folder
import hcgnet
from hcgnet import cli
from hcgnet.ablate import GridError, list_grids, load_grid, parse_grid, plan
from hcgnet.ablate import runs as ablate_runs
from hcgnet.ablate import stats
from hcgnet.ablate.summary import summarise
from hcgnet.training import trainer
from hcgnet.training.interrupts import TrainingInterrupted
from hcgnet.training.logs import ProgressLines

TINY = "HCGNet-(1,1,1)-(k=4,4,4)"

pytestmark = pytest.mark.usefixtures("single_thread")


def grid_text(folder, variants=None):
    base = dict(model=TINY, data=f"imagefolder:{folder}", image_size=16, val_size=0.2, test_size=0.2, workers=0,
                batch_size=4, lr=0.05)
    return yaml.safe_dump({"base": base, "variants": variants or {"wider": {"model": "HCGNet-(1,1,1)-(k=4,4,8)"}}})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=3, per_class=12)


# ------------------------------------------------------------------------------------------------ statistics


def test_t_quantile_matches_scipy():
    for df in range(1, 300):
        assert stats.t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-6)


def test_mean_interval_by_hand():
    # mean 0.82, sample std 0.02, half-width t(0.975, 2) * 0.02 / sqrt(3)
    got = stats.mean_interval([0.80, 0.82, 0.84])
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.82) and got["std"] == pytest.approx(0.02)
    assert (got["low"], got["high"]) == (pytest.approx(0.82 - half, abs=1e-7), pytest.approx(0.82 + half, abs=1e-7))
    one = stats.mean_interval([0.5])
    assert one["mean"] == 0.5 and one["std"] is None and one["low"] is None


@pytest.mark.parametrize("variant,expected_mean,expected_std,verdict", [
    ({0: 0.85, 1: 0.83, 2: 0.90}, 0.04, math.sqrt(0.0007), "undecided"),   # differences .05 .01 .06
    ({0: 0.85, 1: 0.86, 2: 0.90}, 0.05, 0.01, "better"),                   # differences .05 .04 .06
    ({0: 0.75, 1: 0.78, 2: 0.78}, -0.05, 0.01, "worse"),                   # differences -.05 -.04 -.06
])
def test_paired_difference_by_hand(variant, expected_mean, expected_std, verdict):
    base = {0: 0.80, 1: 0.82, 2: 0.84, 3: 0.99}  # seed 3 has no partner: left out
    got = stats.paired_difference(variant, base)
    half = 4.302653 * expected_std / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(expected_mean)
    assert got["low"] == pytest.approx(expected_mean - half, abs=1e-6)
    assert got["high"] == pytest.approx(expected_mean + half, abs=1e-6)
    assert got["verdict"] == verdict


def test_one_pair_is_undecided():
    assert stats.paired_difference({0: 0.9}, {0: 0.1})["verdict"] == "undecided"


def test_the_same_difference_at_every_seed_gives_no_interval_and_is_undecided():
    """60 test images: accuracy moves in steps of 1/60, so two seeds can both differ by exactly 3/60 (as floats,
    by -0.05000000000000004 and -0.04999999999999993): a t-interval of zero width, which is no evidence."""
    got = stats.paired_difference({0: 50 / 60, 1: 46 / 60}, {0: 53 / 60, 1: 49 / 60})
    assert got["n"] == 2 and got["mean"] == pytest.approx(-0.05)
    assert got["low"] is None and got["high"] is None and got["verdict"] == "undecided"
    spread = stats.paired_difference({0: 50 / 60, 1: 45 / 60}, {0: 53 / 60, 1: 49 / 60})   # -3/60 and -4/60
    assert spread["low"] is not None and spread["verdict"] == "undecided"   # t = 12.7 with 2 seeds


def test_no_pair_has_no_verdict():
    # seeds that do not pair (or no runs yet) give nothing to decide on, not an "undecided" comparison
    assert stats.paired_difference({1: 0.9}, {0: 0.1})["verdict"] == "-"
    assert stats.paired_difference({}, {})["verdict"] == "-"


# ------------------------------------------------------------------------------------------------ the grid


def test_the_shipped_grid_lists_and_names_the_switches():
    assert "hcgnet-switches" in list_grids()
    grid = load_grid("hcgnet-switches")
    assert grid.base["data"] == "fashion-mnist" and grid.base["model"].startswith("HCGNet-(")
    kwargs = {name: v["model_kwargs"] for name, v in grid.variants.items()}
    assert {"forget_gate": False} in kwargs.values() and {"update_gate": False} in kwargs.values()
    assert {"gate_act": "relu"} in kwargs.values() and {"wide_branch": "5x5"} in kwargs.values()
    assert {"connectivity": "dense"} in kwargs.values() and {"connectivity": "residual"} in kwargs.values()


def test_the_shipped_grid_plans_and_builds_once_the_models_have_switches(tmp_path):
    from hcgnet.training.config import FIELDS
    if "model_kwargs" not in FIELDS:
        pytest.skip("TrainConfig has no model_kwargs yet (the models' switches)")
    runs = plan(load_grid("hcgnet-switches"), str(tmp_path / "out"), seeds=1, steps=1)
    assert [r.variant for r in runs][0] == "base" and len(runs) == 7
    ablate_runs.check_buildable(runs)
    from hcgnet.ablate.summary import changes
    # the summary's "changes" column: each variant's switch as hcgnet-switches.yaml writes it
    assert changes(runs) == {"base": "model: HCGNet-(2,2,2)-(k=8,8,8)", "no-forget-gate": "forget_gate: false",
                             "no-update-gate": "update_gate: false", "relu-gates": "gate_act: relu",
                             "wide-branch-5x5": "wide_branch: 5x5", "dense-only": "connectivity: dense",
                             "residual-only": "connectivity: residual"}


def test_a_variants_mapping_overrides_are_merged_into_the_base():
    grid = parse_grid("base: {model: m, model_kwargs: {a: 1, b: 2}}\nvariants: {v: {model_kwargs: {b: 3}}}", "g")
    assert grid.options("v") == {"model": "m", "model_kwargs": {"a": 1, "b": 3}}
    assert grid.options("base") == {"model": "m", "model_kwargs": {"a": 1, "b": 2}}


@pytest.mark.parametrize("text,message", [
    ("base: {model: [1\n", "not valid YAML"),
    ("base: {model: hcgnet_a1}\n", "no variants"),
    ("base: {}\nvariants: {v: {epochs: 3}}", "budget is the same for every variant"),
    ("base: {seed: 3}\nvariants: {v: {lr: 0.1}}", "sets seed"),
    ("base: {}\nvariants: {base: {lr: 0.1}}", "variant name 'base' is reserved for the grid's base"),
    ("base: {}\nvariants: {a/b: {lr: 0.1}}", "variant name 'a/b' must be letters, digits"),
    ("base: {}\nvariants: {v: {}}", "changes nothing"),
    ("base: {}\nvariants: {v: {lr: 0.1}}\nextra: 1", "unknown key"),
])
def test_bad_grids_are_refused_in_one_line(text, message):
    with pytest.raises(GridError, match=message):
        parse_grid(text, "g.yaml")


@pytest.mark.parametrize("text,key,line", [
    ("base: {model: m}\nvariants:\n  nfg: {lr: 0.1}\n  nfg: {lr: 0.2}\n", "nfg", 4),   # a variant twice
    ("base:\n  model: m\n  lr: 0.1\n  lr: 0.2\nvariants: {v: {lr: 0.3}}\n", "lr", 4),  # an option twice
    ("base: {model: m}\nvariants: {v: {lr: 0.3}}\nbase: {model: n}\n", "base", 3),
])
def test_a_key_given_twice_is_refused_not_dropped(text, key, line):
    """YAML itself keeps the last of two equal keys: the first variant of a name would vanish from the grid."""
    with pytest.raises(GridError) as e:
        parse_grid(text, "g.yaml")
    assert str(e.value).startswith(f"g.yaml line {line}: key {key!r} is given twice") and "\n" not in str(e.value)


def test_one_option_spelled_two_ways_is_refused():
    with pytest.raises(GridError, match="base sets batch_size twice .as 'batch-size' and 'batch_size'."):
        parse_grid("base: {batch-size: 4, batch_size: 8}\nvariants: {v: {lr: 0.1}}", "g.yaml")
    # a key that overrides one merged in from an anchor is YAML's own way of overriding, not a duplicate
    grid = parse_grid("base: &b {model: m, lr: 0.1}\nvariants: {v: {<<: *b, lr: 0.2}}", "g.yaml")
    assert grid.variants["v"] == {"model": "m", "lr": 0.2}


@pytest.mark.parametrize("option,hint", [
    ("batchsize", "did you mean batch_size?"),
    ("weight_decy", "did you mean weight_decay?"),
    ("forget_gates", "the options are hcgnet train's (hcgnet train --help); a model's switches go under "
                     "model_kwargs"),
])
def test_an_unknown_option_names_the_close_one_not_all(option, hint):
    with pytest.raises(GridError) as e:
        parse_grid(f"base: {{{option}: 4}}\nvariants: {{v: {{lr: 0.1}}}}", "g.yaml")
    assert str(e.value) == f"g.yaml: base: unknown option {option!r}; {hint}"


def test_bad_options_values_seeds_and_models_are_refused_before_any_run(tmp_path, images):
    def planned(variants, seeds=1):
        return plan(parse_grid(grid_text(images, variants), "g"), str(tmp_path / "out"), seeds, steps=1)

    with pytest.raises(GridError, match="variant v: .*unknown option 'forget_gates'"):
        planned({"v": {"forget_gates": False}})
    with pytest.raises(GridError, match="variant v: .*stem must be cifar or imagenet"):
        planned({"v": {"stem": "bogus"}})
    with pytest.raises(GridError, match="--seeds must be 1 or more"):
        planned({"v": {"lr": 0.1}}, seeds=0)
    with pytest.raises(GridError, match="variant v: "):
        ablate_runs.check_buildable(planned({"v": {"model": "HCGNet-(1,1)-(k=4"}}))
    # a switch the model lacks, and a value a switch cannot take
    runs = planned({"v": {"model_kwargs": {"no_such_switch": True}}})
    with pytest.raises(GridError, match="variant v: .*no_such_switch"):
        ablate_runs.check_buildable(runs)
    with pytest.raises(GridError, match="variant v: .*connectivity"):
        ablate_runs.check_buildable(planned({"v": {"model_kwargs": {"connectivity": "sparse"}}}))
    ablate_runs.check_buildable(runs[:1])
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_in_one_line_with_exit_2(tmp_path, images, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {model: [1\n")
    assert cli.main(["ablate", "--grid", str(bad), "--output", str(tmp_path / "o"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid YAML" in err and len(err.splitlines()) == 1
    good = tmp_path / "good.yaml"
    good.write_text(grid_text(images, {"v": {"model": "HCGNet-(1,1)-(k=4"}}))
    assert cli.main(["ablate", "--grid", str(good), "--output", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "variant v" in capsys.readouterr().err
    good.write_text(grid_text(images))
    assert cli.main(["ablate", "--grid", str(good), "--output", str(tmp_path / "o"), "--seeds", "0"]) == 2
    assert "--seeds must be 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "summary.md").write_text("someone else's")
    assert cli.main(["ablate", "--grid", str(good), "--output", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "already holds summary.md" in capsys.readouterr().err
    assert (tmp_path / "o" / "summary.md").read_text() == "someone else's"
    assert cli.main(["ablate", "--list-grids"]) == 0
    assert "hcgnet-switches" in capsys.readouterr().out


def test_slurm_missing_is_refused_in_one_line_before_anything_is_written(tmp_path, images, capsys, monkeypatch):
    if importlib.util.find_spec("submitit") is None:   # found, not imported: the refusal comes before any import
        pytest.skip("submitit is not installed")
    monkeypatch.setattr(ablate_runs.shutil, "which", lambda name: None)  # a machine without Slurm
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    code = cli.main(["ablate", "--grid", str(path), "--seeds", "1", "--steps", "2", "--output",
                     str(tmp_path / "g"), "--executor", "slurm"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Slurm not found" in err
    assert "login node of a Slurm cluster" in err and "leave --executor out" in err
    assert captured.out == "" and not (tmp_path / "g").exists()


@pytest.mark.parametrize("data, message", [("imagefolder:{tmp}/nothere", "no such folder"),
                                           ("{tmp}", "write imagefolder:")])
def test_missing_data_is_refused_before_any_run_and_any_file(tmp_path, images, capsys, data, message):
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    code = cli.main(["ablate", "--grid", str(path), "--seeds", "1", "--steps", "1", "--output", str(tmp_path / "g"),
                     "--data", data.format(tmp=tmp_path)])
    captured = capsys.readouterr()
    assert code == 2 and len(captured.err.strip().splitlines()) == 1 and message in captured.err
    assert "run 1/" not in captured.out and not (tmp_path / "g").exists()


# ------------------------------------------------------------------------------------------------ a real grid


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory, images):
    """2 variants x 2 seeds of 2 steps, killed (SIGINT) in its third run and started again; the first batch
    each run trained on and the fit() calls of both attempts are recorded."""
    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("ablate") / "grid"
    path = out.parent / "toy.yaml"
    path.write_text(grid_text(images))
    runs = plan(load_grid(str(path)), str(out), seeds=2, steps=2)
    first_batches, fits, steps = {}, [], {"n": 0}
    real_epoch, real_fit, real_step = trainer.train_one_epoch, trainer.fit, ProgressLines.step

    def train_one_epoch(model, batches, *args, first_step=0, **kwargs):
        batches = iter(batches)
        first = next(batches)
        if first_step == 0:
            first_batches[str(trainer_config["output"])] = [t.clone() for t in first]
        return real_epoch(model, [first, *batches], *args, first_step=first_step, **kwargs)

    def fit(config, log=print):
        trainer_config["output"] = config.output
        fits.append((config.output, config.resume))
        return real_fit(config, log)

    def step(self, global_step, loss, lr):
        real_step(self, global_step, loss, lr)
        steps["n"] += 1
        if steps["n"] == 5:  # the first step of the third run
            import os
            os.kill(os.getpid(), signal.SIGINT)

    trainer_config = {}
    mp.setattr(trainer, "train_one_epoch", train_one_epoch)
    mp.setattr("hcgnet.training.fit", fit)
    mp.setattr(ProgressLines, "step", step)
    lines = []
    with pytest.raises(TrainingInterrupted, match="interrupted in run 3/4 .wider seed 0.*again to continue"):
        ablate_runs.run_grid(runs, log=lines.append)
    finished_before = {r.config.output: (out / "runs" / r.variant / f"seed{r.seed}" / "results.json").stat().st_mtime_ns
                       for r in runs[:2]}
    assert (out / "runs" / "wider" / "seed0" / "last.pt").exists()
    lines2 = []
    ablate_runs.run_grid(runs, log=lines2.append)
    mp.undo()
    summary = summarise(runs, str(out), "toy")
    yield dict(out=out, runs=runs, fits=fits, first_batches=first_batches, before=finished_before, lines=lines,
               lines2=lines2, summary=summary, path=path)


def test_paired_seeds_give_every_variant_the_same_first_batch(finished_grid):
    b = {k.split("runs/")[1]: v for k, v in finished_grid["first_batches"].items()}
    for seed in (0, 1):
        x_base, y_base = b[f"base/seed{seed}"]
        x_wide, y_wide = b[f"wider/seed{seed}"]
        assert (x_base == x_wide).all() and (y_base == y_wide).all()  # same images, same augmentation draws
    assert not (b["base/seed0"][0] == b["base/seed1"][0]).all()


def test_a_killed_grid_redoes_no_finished_run_and_finishes_the_interrupted_one(finished_grid):
    g = finished_grid
    outputs = [r.config.output for r in g["runs"]]
    # attempt 1: runs 1-3 started (3 interrupted); attempt 2: run 3 resumed, run 4 new, runs 1-2 never fitted again
    assert g["fits"] == [(outputs[0], False), (outputs[1], False), (outputs[2], False), (outputs[2], True),
                         (outputs[3], False)]
    for out, mtime in g["before"].items():
        assert (g["out"] / out.split("grid/")[1] / "results.json").stat().st_mtime_ns == mtime
    assert any("run 1/4: base seed 0: finished earlier, kept" in line for line in g["lines2"])
    assert any("run 3/4: wider seed 0 (resuming)" in line for line in g["lines2"])
    assert any("resumed" in line and "step 1" in line for line in g["lines2"])
    for out in outputs:
        assert (g["out"] / out.split("grid/")[1] / "results.json").is_file()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_summary_equals_the_runs_results_recomputed_independently(finished_grid):
    out = finished_grid["out"]
    top1 = {(v, s): json.loads((out / "runs" / v / f"seed{s}" / "results.json").read_text())["test_top1"]
            for v in ("base", "wider") for s in (0, 1)}
    runs_csv = {(r["variant"], int(r["seed"])): r for r in read_csv(out / "runs.csv")}
    for key, value in top1.items():
        assert float(runs_csv[key]["test_top1"]) == value and runs_csv[key]["status"] == "finished"
        assert runs_csv[key]["code"].startswith(f"hcgnet {hcgnet.__version__}")   # which code trained the run
    summary = {r["variant"]: r for r in read_csv(out / "summary.csv")}
    t = scipy_stats.t.ppf(0.975, 1)
    for variant in ("base", "wider"):
        values = [top1[(variant, s)] for s in (0, 1)]
        mean, sd = statistics.mean(values), statistics.stdev(values)
        row = summary[variant]
        assert int(row["n"]) == 2
        # summary.csv writes 6 significant digits
        assert float(row["test_top1_mean"]) == pytest.approx(mean, rel=1e-5)
        assert float(row["test_top1_std"]) == pytest.approx(sd, rel=1e-5)
        assert float(row["test_top1_low"]) == pytest.approx(mean - t * sd / math.sqrt(2), rel=1e-5, abs=1e-6)
        assert float(row["test_top1_high"]) == pytest.approx(mean + t * sd / math.sqrt(2), rel=1e-5, abs=1e-6)
        metrics = [read_csv(out / "runs" / variant / f"seed{s}" / "metrics.csv") for s in (0, 1)]
        speeds = [statistics.mean(float(r["images_per_s"]) for r in m) for m in metrics]
        assert float(row["images_per_s"]) == pytest.approx(statistics.mean(speeds), rel=1e-5)
        assert row["budget"] == "2 optimiser steps (one epoch cut short)" and row["steps"] == "2"
        for key, text in row.items():  # no float written with more than 6 significant digits
            if "." in text and text.replace(".", "").replace("-", "").replace("e", "").isdigit():
                assert text == repr(float(f"{float(text):.6g}")), (key, text)
    # parameters and multiply-adds of the network each variant trained (3 classes, 3 channels, 16x16)
    from hcgnet.complexity import count_macs, count_params
    from hcgnet.models import create_model
    wide = create_model("HCGNet-(1,1,1)-(k=4,4,8)", num_classes=3)
    assert int(summary["wider"]["params"]) == count_params(wide)
    assert int(summary["wider"]["macs"]) == count_macs(wide, (3, 16, 16))
    assert int(summary["base"]["params"]) == count_params(create_model(TINY, num_classes=3))
    diffs = [top1[("wider", s)] - top1[("base", s)] for s in (0, 1)]
    dmean, dsd = statistics.mean(diffs), statistics.stdev(diffs)
    wider = summary["wider"]
    assert float(wider["test_top1_diff_mean"]) == pytest.approx(dmean, rel=1e-5, abs=1e-12)
    if dsd > 0:
        low, high = dmean - t * dsd / math.sqrt(2), dmean + t * dsd / math.sqrt(2)
        assert float(wider["test_top1_diff_low"]) == pytest.approx(low, rel=1e-5, abs=1e-6)
        assert float(wider["test_top1_diff_high"]) == pytest.approx(high, rel=1e-5, abs=1e-6)
        assert wider["test_top1_verdict"] == ("better" if low > 0 else "worse" if high < 0 else "undecided")
    md = (out / "summary.md").read_text()
    assert f"{100 * statistics.mean(top1[('base', s)] for s in (0, 1)):.2f}" in md
    assert "| base |" in md and "(base)" in md and "budget per run: 2 optimiser steps" in md
    # which switch each variant changes, from the grid file (not the same model name on every row)
    assert f"| base | model: {TINY} | 2 |" in md and "| wider | model: HCGNet-(1,1,1)-(k=4,4,8) | 2 |" in md
    assert summary["wider"]["changes"] == "model: HCGNet-(1,1,1)-(k=4,4,8)"
    assert (out / "ablation.png").stat().st_size > 1000


def test_a_changed_config_is_refused_not_reused(finished_grid, tmp_path):
    g = finished_grid
    grid = load_grid(str(g["path"]))
    grid.base["lr"] = 0.07
    runs = plan(grid, str(g["out"]), seeds=2, steps=2)
    assert ablate_runs.status(runs[0]) == "changed"
    with pytest.raises(GridError, match=r"holds a run of another config than base seed 0 now has \(lr 0.05 -> 0.07\); "
                                        "pass --force"):
        ablate_runs.run_grid(runs, log=lambda line: None)


def test_a_failing_grid_still_summarises_what_has_finished(finished_grid, monkeypatch):
    from hcgnet.ablate import study
    g = finished_grid
    (g["out"] / "summary.csv").unlink()

    def stopped(*args, **kwargs):
        raise TrainingInterrupted("interrupted in run 4/4", signal.SIGINT)

    monkeypatch.setattr(study, "run_grid", stopped)
    lines = []
    with pytest.raises(TrainingInterrupted):
        study.ablate(load_grid(str(g["path"])), str(g["out"]), seeds=2, steps=2, log=lines.append)
    assert len(read_csv(g["out"] / "summary.csv")) == 2 and "runs finished so far" in lines[-1]


SUMMARY_FILES = ("summary.md", "summary.csv", "runs.csv", "ablation.png")


def test_a_refused_command_leaves_a_finished_grids_summary_as_it_was(finished_grid, capsys):
    # the same grid with another budget: every run folder holds a run of another config
    g = finished_grid
    before = {name: (g["out"] / name).read_bytes() for name in SUMMARY_FILES}
    assert cli.main(["ablate", "--grid", str(g["path"]), "--output", str(g["out"]), "--seeds", "2",
                     "--steps", "3"]) == 2
    assert {name: (g["out"] / name).read_bytes() for name in SUMMARY_FILES} == before
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1
    assert "holds a run of another config" in captured.err and "--force" in captured.err
    assert "(max_steps_per_epoch 2 -> 3)" in captured.err   # what differs, from config.yaml against the plan
    assert captured.out == ""  # refused before the grid's first line


def test_an_unknown_submitit_parameter_is_one_line_and_leaves_no_log_folder(finished_grid, tmp_path):
    """submitit names an unknown parameter in a NameError (no TypeError or ValueError), after making its folder."""
    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit is not installed")
    from hcgnet.ablate.runs import run_grid

    g = finished_grid
    runs = plan(load_grid(str(g["path"])), str(g["out"]), seeds=2, steps=2)
    logs = tmp_path / "submitit"
    with pytest.raises(GridError) as e:
        run_grid(runs, executor="submitit-local", slurm_parameters={"no_such_option": 1}, folder=str(logs),
                 log=lambda line: None)
    assert str(e.value).startswith("--slurm-parameters: ") and "no_such_option" in str(e.value)
    assert "\n" not in str(e.value) and not logs.exists()


def test_a_refusal_once_the_grid_has_begun_writes_no_summary_either(finished_grid, monkeypatch):
    # run_grid's own refusals (submitit's parameters, a folder changed meanwhile) come before any run too
    from hcgnet.ablate import study
    g = finished_grid
    before = {name: (g["out"] / name).read_bytes() for name in SUMMARY_FILES}

    def refused(*args, **kwargs):
        raise GridError("--slurm-parameters: unexpected keyword")

    monkeypatch.setattr(study, "run_grid", refused)
    lines = []
    with pytest.raises(GridError, match="slurm-parameters"):
        study.ablate(load_grid(str(g["path"])), str(g["out"]), seeds=2, steps=2, log=lines.append)
    assert not any("finished so far" in line for line in lines)
    assert {name: (g["out"] / name).read_bytes() for name in SUMMARY_FILES} == before


def test_the_cli_on_a_finished_grid_only_rebuilds_the_summary(finished_grid, capsys, monkeypatch):
    g = finished_grid
    monkeypatch.setattr("hcgnet.training.fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    before = (g["out"] / "runs.csv").read_text()
    (g["out"] / "runs.csv").unlink()
    assert cli.main(["ablate", "--grid", str(g["path"]), "--output", str(g["out"]), "--seeds", "2",
                     "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "run 4/4: wider seed 1: finished earlier, kept" in out and "| wider |" in out
    assert (g["out"] / "runs.csv").read_text() == before


def test_fewer_seeds_on_a_finished_grid_keep_the_summary_of_every_seed_finished(finished_grid, capsys, monkeypatch):
    """--seeds 1 on a grid finished with 2 seeds trains nothing and summarises both seeds, as before, not one."""
    g = finished_grid
    monkeypatch.setattr("hcgnet.training.fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    before = (g["out"] / "runs.csv").read_text()
    assert cli.main(["ablate", "--grid", str(g["path"]), "--output", str(g["out"]), "--seeds", "1",
                     "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 variants x 1 seed = 2 runs" in out and "the summary also covers seed 1, finished by an earlier" in out
    assert (g["out"] / "runs.csv").read_text() == before
    assert [row["n"] for row in read_csv(g["out"] / "summary.csv")] == ["2", "2"]


# ------------------------------------------------------------------------------------------------ executors


@pytest.mark.parametrize("executor,jobs", [("submitit-local", 1), ("local", 2)])
def test_the_runs_of_a_grid_as_submitit_jobs_or_parallel_processes(tmp_path, images, executor, jobs):
    """submitit's LocalExecutor (offline) and a pool of 2 processes run the same ordinary runs."""
    if executor.startswith("submitit"):
        pytest.importorskip("submitit")
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    out = tmp_path / "grid"
    runs = plan(load_grid(str(path)), str(out), seeds=1, steps=1)
    lines = []
    ablate_runs.run_grid(runs, jobs=jobs, executor=executor, log=lines.append)
    for run in runs:
        result = json.loads((out / "runs" / run.variant / "seed0" / "results.json").read_text())
        assert result["model"] == run.config.model
    assert sum("finished" in line for line in lines) == 2
    if executor.startswith("submitit"):
        assert any("submitted as job" in line for line in lines) and (out / "submitit").is_dir()


def test_attacks_add_accuracy_under_each_attack_with_paired_differences(tmp_path, images):
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    out = tmp_path / "grid"
    runs = plan(load_grid(str(path)), str(out), seeds=2, steps=1)
    fgsm = {"attack": "fgsm", "eps": [0.0, 0.05], "options": {}}
    pgd = {"attack": "pgd", "eps": [0.05], "options": {"steps": 2, "limit": 3}}
    ablate_runs.run_grid(runs, attacks=[fgsm], log=lambda line: None)
    # a second attack asked later is made on the finished runs; the first is not made again
    before = {run.variant + str(run.seed): (Path(run.config.output) / "attack-fgsm.json").stat().st_mtime_ns
              for run in runs}
    lines = []
    ablate_runs.run_grid(runs, attacks=[fgsm, pgd], log=lines.append)
    assert not any("finished earlier, kept" in line for line in lines)
    summarise(runs, str(out), "toy")
    at, at_pgd = {}, {}
    for run in runs:
        folder = out / "runs" / run.variant / f"seed{run.seed}"
        assert (folder / "attack-fgsm.json").stat().st_mtime_ns == before[run.variant + str(run.seed)]
        rows = {row["eps"]: row for row in json.loads((folder / "attack-fgsm.json").read_text())["rows"]}
        result = json.loads((folder / "results.json").read_text())
        # eps 0 changes no image: the accuracy of the test set the run was scored on
        assert rows[0.0]["accuracy"] == pytest.approx(result["test_top1"])
        assert rows[0.0]["images"] == result["test_images"]
        at[(run.variant, run.seed)] = rows[0.05]["accuracy"]
        pgd_rows = json.loads((folder / "attack-pgd.json").read_text())["rows"]
        assert [r["images"] for r in pgd_rows] == [3]  # --attack-limit
        at_pgd[(run.variant, run.seed)] = pgd_rows[0]["accuracy"]
    # asked again: nothing to do
    lines = []
    ablate_runs.run_grid(runs, attacks=[fgsm, pgd], log=lines.append)
    assert sum("finished earlier, kept" in line for line in lines) == len(runs)
    summary = {r["variant"]: r for r in read_csv(out / "summary.csv")}
    for variant in ("base", "wider"):
        values = [at[(variant, s)] for s in (0, 1)]
        assert float(summary[variant]["attack_fgsm_0.05_mean"]) == pytest.approx(statistics.mean(values), rel=1e-5)
        values = [at_pgd[(variant, s)] for s in (0, 1)]
        # PGD's column names its steps (the step size 2.5 eps/steps and no random start: the defaults)
        assert float(summary[variant]["attack_pgd-2steps_0.05_mean"]) == pytest.approx(statistics.mean(values),
                                                                                      rel=1e-5)
    diffs = [at[("wider", s)] - at[("base", s)] for s in (0, 1)]
    assert float(summary["wider"]["attack_fgsm_0.05_diff_mean"]) == pytest.approx(statistics.mean(diffs),
                                                                                  rel=1e-5, abs=1e-12)
    text = (out / "summary.md").read_text()
    assert "## test top-1 under fgsm, eps 0.05" in text
    assert "## test top-1 under pgd, 2 steps of 2.5 eps/2 from the image, eps 0.05" in text
    # what each score rests on: the runs' test images (all attacked by fgsm), pgd's --attack-limit 3
    images = {json.loads((Path(run.config.output) / "results.json").read_text())["test_images"] for run in runs}
    assert len(images) == 1
    n = images.pop()
    for variant in ("base", "wider"):
        assert (summary[variant]["test_images"], summary[variant]["test_images_fgsm"],
                summary[variant]["test_images_pgd-2steps"]) == (str(n), str(n), "3")
    assert (f"test top-1 rests on {n} test images per run, accuracy under fgsm on {n}, under pgd-2steps on 3 of them"
            in text)
    # a run replaced (--force) after its config changed is attacked again: the old file is not reused
    grid = load_grid(str(path))
    grid.variants["wider"]["lr"] = 0.02
    changed = plan(grid, str(out), seeds=2, steps=1)
    old = (out / "runs" / "wider" / "seed0" / "attack-fgsm.json").read_text()
    ablate_runs.run_grid(changed, force=True, attacks=[fgsm], log=lambda line: None)
    new = json.loads((out / "runs" / "wider" / "seed0" / "attack-fgsm.json").read_text())
    assert new["run"] == changed[2].identity != json.loads(old)["run"]
    assert (out / "runs" / "base" / "seed0" / "attack-fgsm.json").read_text().count('"run"') == 1
    # the same eps in another order is the same attack: neither refused nor made again
    reordered = {**fgsm, "eps": [0.05, 0.0]}
    ablate_runs.check_attacks(changed, [reordered], force=False)
    assert not ablate_runs.attacks_todo(Path(changed[0].config.output), [reordered], changed[0].identity)


@pytest.mark.parametrize("argv, message", [
    (["--attack", "fgsm,cw"], "unknown attack 'cw'"),
    (["--attack-limit", "5"], "--attack-limit goes with --attack; add --attack"),
    (["--eps", "0,0.1"], "--eps goes with --attack; add --attack"),
    (["--eps", "0", "--attack-steps", "3"], "--eps and --attack-steps go with --attack; add --attack"),
    (["--attack", "fgsm", "--attack-steps", "3"], "--attack-steps is the iterations of pgd"),
    (["--attack", "fgsm", "--attack-limit", "0"], "must be a whole number of 1 or more, got 0"),
    (["--attack", "pgd", "--attack-steps", "0"], "must be a whole number of 1 or more, got 0"),
    (["--attack", "pgd", "--attack-steps", "-3"], "must be a whole number of 1 or more, got -3"),
])
def test_attack_options_refused_in_one_line(tmp_path, images, capsys, argv, message):
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    code = cli.main(["ablate", "--grid", str(path), "--output", str(tmp_path / "g"), "--steps", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g" / "runs").exists()


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "--attack-steps must be a whole number of 1 or more, got 0"),
    ({"steps": -3}, "--attack-steps must be a whole number of 1 or more, got -3"),
    ({"steps": 2, "limit": 0}, "--attack-limit must be a whole number of 1 or more, got 0"),
    ({"steps": 2.5}, "--attack-steps must be a whole number of 1 or more, got 2.5"),
    ({"steps": 2.0}, "--attack-steps must be a whole number of 1 or more, got 2.0"),
    ({"steps": True}, "--attack-steps must be a whole number of 1 or more, got True"),
    ({"limit": "10"}, "--attack-limit must be a whole number of 1 or more, got '10'"),
])
def test_ablate_names_the_attack_options_by_its_own_flags(tmp_path, images, options, message):
    """ablate's --steps is the training budget: a bad PGD steps is --attack-steps, refused before anything."""
    from hcgnet.ablate import study
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    with pytest.raises(GridError) as e:
        study.ablate(load_grid(str(path)), str(tmp_path / "g"), seeds=1, steps=1,
                     attacks=[{"attack": "pgd", "eps": [0.05], "options": options}], log=lambda line: None)
    assert str(e.value) == message and not (tmp_path / "g").exists()


def test_slurm_parameters_without_a_submitit_executor_are_refused(tmp_path, images, capsys):
    """They would be dropped without a word and the grid run here."""
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    assert cli.main(["ablate", "--grid", str(path), "--output", str(tmp_path / "g"), "--steps", "1",
                     "--slurm-parameters", '{"timeout_min": 60}']) == 2
    assert capsys.readouterr().err == ("hcgnet: error: --slurm-parameters are submitit's, for --executor slurm (or "
                                       "submitit-local); add --executor slurm, or drop them to run the grid here\n")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("argv, message", [
    (["--attack", "pgd", "--attack-steps", "0"], "--attack-steps must be a whole number of 1 or more, got 0"),
    (["--attack", "fgsm", "--attack-limit", "0"], "--attack-limit must be a whole number of 1 or more, got 0"),
])
def test_the_cli_names_the_attack_options_by_ablates_flags(tmp_path, images, capsys, argv, message):
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    assert cli.main(["ablate", "--grid", str(path), "--output", str(tmp_path / "g"), "--steps", "1", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"hcgnet: error: {message}"


def test_other_attack_settings_are_refused_not_silently_replaced(tmp_path, images, capsys):
    """PGD with 2 steps after PGD with 1 step would replace every run's attack-pgd.json and the summary under the
    same heading: refused, naming what differs; --force replaces it, and the summary names the steps."""
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    out = tmp_path / "grid"
    argv = ["ablate", "--grid", str(path), "--output", str(out), "--seeds", "1", "--steps", "1", "--attack", "pgd",
            "--eps", "0.05", "--attack-limit", "3"]
    assert cli.main([*argv, "--attack-steps", "1"]) == 0
    capsys.readouterr()
    saved = {name: (out / name).read_bytes() for name in SUMMARY_FILES}
    attacked = out / "runs" / "base" / "seed0" / "attack-pgd.json"
    first = attacked.read_text()
    assert "## test top-1 under pgd, 1 step of 2.5 eps/1 from the image, eps 0.05" in saved["summary.md"].decode()
    assert cli.main([*argv, "--attack-steps", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"hcgnet: error: {attacked} holds pgd with other settings than asked "
                                    "(steps 1 -> 2); ask for the same settings, pass --force to replace it in every "
                                    "run, or choose another --output") and captured.out == ""
    assert attacked.read_text() == first and {name: (out / name).read_bytes() for name in SUMMARY_FILES} == saved
    assert cli.main([*argv, "--eps", "0.02", "--attack-steps", "1"]) == 2   # other eps, likewise
    assert "(eps 0.05 -> 0.02)" in capsys.readouterr().err
    assert cli.main([*argv, "--attack-steps", "2", "--force"]) == 0
    capsys.readouterr()
    assert json.loads(attacked.read_text())["asked"]["options"]["steps"] == 2
    text = (out / "summary.md").read_text()
    assert "## test top-1 under pgd, 2 steps of 2.5 eps/2 from the image, eps 0.05" in text and "1 step of" not in text
    assert "attack_pgd-2steps_0.05_mean" in read_csv(out / "summary.csv")[0]


def test_list_grids_shows_whole_sentences(capsys):
    assert cli.main(["ablate", "--list-grids"]) == 0
    listing = " ".join(capsys.readouterr().out.split())  # as read, not as wrapped
    # the robustness grid's first sentence runs over four comment lines of its file
    assert ("fashion-mnist-robustness The evidence of ROBUSTNESS.md: HCGNet-A1 against DenseNet-BC-100 (k=12) and the "
            "CIFAR ResNet-56, the paper's neighbours at about its size, trained by one recipe (the demo's: bf16, "
            "channels_last, cosine) on Fashion-MNIST, then attacked with the paper's measure (fgsm-any) and PGD. "
            "hcgnet-switches") in listing


def test_shown_intervals_are_clipped_to_what_accuracy_can_take_and_the_csv_keeps_them(monkeypatch, tmp_path):
    from hcgnet.ablate import summary as ablate_summary
    # two seeds, accuracies 0 and 1 (base) and 1 and 0 (v): mean 0.5, std sqrt(0.5), half-width
    # t(0.975, 1) * sqrt(0.5) / sqrt(2) = 12.706205 / 2 = 6.3531; the differences 1 and -1: mean 0, half 12.706205
    rows = [{"variant": v, "seed": seed, "status": "finished", "test_top1": top1}
            for v, pairs in (("base", ((0, 0.0), (1, 1.0))), ("v", ((0, 1.0), (1, 0.0)))) for seed, top1 in pairs]
    table = ablate_summary.variant_table(rows, ["base", "v"])
    assert table[0]["test_top1_low"] == pytest.approx(0.5 - 6.3531025, abs=1e-6)  # summary.csv: the raw bound
    assert table[1]["test_top1_diff_high"] == pytest.approx(12.706205, abs=1e-6)
    md = ablate_summary.markdown(table, ["test_top1"], "t", "b")
    assert "| 50.00 ± 70.71 | [0.00, 100.00] |" in md and "| 0.00 | [-100.00, 100.00] | undecided |" in md
    assert "-585" not in md and "clipped" in md
    figures = []
    monkeypatch.setattr("matplotlib.pyplot.close", figures.append)
    ablate_summary.plot(table, tmp_path / "ablation.png", "t")
    left, right = figures[0].axes
    assert -15 < left.get_xlim()[0] and left.get_xlim()[1] < 115  # matplotlib's margins around 0..100
    assert -125 < right.get_xlim()[0] and right.get_xlim()[1] < 125  # unclipped: +-1270


@pytest.mark.parametrize("counts, line", [
    # max_test_images 300 and --attack-limit 50: once, as every variant's runs agree
    ({"base": (300, 50), "wider": (300, 50)},
     "test top-1 rests on 300 test images per run, accuracy under attack on 50 of them"),
    # a variant with another test split: per variant
    ({"base": (300, 50), "wider": (240, 40)},
     "test top-1 rests on base 300, wider 240 test images per run, accuracy under attack on base 50, wider 40 of them"),
], ids=["once", "per-variant"])
def test_the_summary_says_on_how_many_images_its_scores_rest(monkeypatch, tmp_path, images, counts, line):
    from hcgnet.ablate import summary as ablate_summary
    path = tmp_path / "toy.yaml"
    path.write_text(grid_text(images))
    runs = plan(load_grid(str(path)), str(tmp_path / "out"), seeds=2, steps=5)
    rows = [{"variant": r.variant, "seed": r.seed, "status": "finished", "steps": 5, "test_top1": 0.5 + r.seed / 10,
             "test_images": counts[r.variant][0], "attack_fgsm-any_0.01": 0.25,
             "test_images_fgsm-any": counts[r.variant][1]} for r in runs]
    monkeypatch.setattr(ablate_summary, "collect", lambda runs: rows)  # as if read from the run folders
    figures = []
    monkeypatch.setattr("matplotlib.pyplot.close", figures.append)
    summarise(runs, str(tmp_path / "out"), "toy")
    md = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert md[2] == f"budget per run: 5 optimiser steps (one epoch cut short); 5 steps taken by every run; {line}"
    assert figures[0]._suptitle.get_text().splitlines()[-1] == line
    summary = {r["variant"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    for variant, (test, attacked) in counts.items():
        assert (summary[variant]["test_images"], summary[variant]["test_images_fgsm-any"]) == (str(test), str(attacked))


def test_summary_md_gives_a_variants_size_and_speed_once():
    """The first table (clean top-1) carries params, MACs and images/s; the attack tables after it do not repeat
    them, and every row has as many cells as its table's header."""
    from hcgnet.ablate import summary as ablate_summary
    rows = [{"variant": v, "seed": seed, "status": "finished", "test_top1": 0.5 + seed / 100 + (v == "v") / 50,
             "attack_fgsm_0.1": 0.2 + seed / 100, "params": 1234, "macs": 5678, "images_per_s": 42.0}
            for v in ("base", "v") for seed in range(3)]
    md = ablate_summary.markdown(ablate_summary.variant_table(rows, ["base", "v"]),
                                 ["test_top1", "attack_fgsm_0.1"], "t", "b")
    tables = [[line for line in part.splitlines() if line.startswith("|")] for part in md.split("\n## ")[1:]]
    assert len(tables) == 2
    clean, attacked = ([cell.strip() for cell in table[0].strip("|").split("|")] for table in tables)
    assert clean[5:8] == ["params", "MACs", "images/s"] and "params" not in attacked and "images/s" not in attacked
    assert attacked == clean[:5] + clean[8:]
    for table in tables:
        assert {line.count("|") for line in table} == {table[0].count("|")}
    assert "| 42.0 |" in tables[0][2] and "42.0" not in "".join(tables[1])


@pytest.mark.parametrize("seeds, cautioned", [(2, True), (3, False), (10, False)])
def test_the_few_seeds_caution_only_where_a_comparison_rests_on_fewer_than_3(seeds, cautioned):
    from hcgnet.ablate import summary as ablate_summary
    rows = [{"variant": v, "seed": seed, "status": "finished", "test_top1": 0.5 + seed / 100 + (v == "v") / 50}
            for v in ("base", "v") for seed in range(seeds)]
    md = ablate_summary.markdown(ablate_summary.variant_table(rows, ["base", "v"]), ["test_top1"], "t", "b")
    assert ("t = 12.71" in md) == cautioned
    # a variant with 2 finished seeds among others with 3: its comparison rests on 2
    md = ablate_summary.markdown(ablate_summary.variant_table(rows[:-1] if seeds == 3 else rows, ["base", "v"]),
                                 ["test_top1"], "t", "b")
    assert ("t = 12.71" in md) == (seeds <= 3)


def test_a_difference_that_rounds_to_zero_shows_no_minus_sign():
    from hcgnet.ablate import summary as ablate_summary
    # differences -0.00004 and 0.00002: mean -0.00001 (-0.001 points, "-0.00" at two decimals); std 4.2426e-5,
    # half-width 12.706205 * 4.2426e-5 / sqrt(2) = 3.8119e-4: [-0.039, 0.037] points
    rows = [{"variant": v, "seed": seed, "status": "finished", "test_top1": top1}
            for v, pairs in (("base", ((0, 0.5), (1, 0.6))), ("v", ((0, 0.49996), (1, 0.60002))))
            for seed, top1 in pairs]
    md = ablate_summary.markdown(ablate_summary.variant_table(rows, ["base", "v"]), ["test_top1"], "t", "b")
    assert "| 0.00 | [-0.04, 0.04] | undecided |" in md and "-0.00" not in md
    assert stats.interval_text({"mean": -0.00004, "std": 0.0, "low": -0.00001, "high": 0.00001}) == (
        "0.00 ± 0.00", "[0.00, 0.00]")


@pytest.mark.parametrize("argv", [["ablate", "--list-grids"], ["ablate", "--help"]])
def test_listing_grids_and_help_import_no_torch(tmp_path, argv):
    import subprocess
    import sys
    probe = ("import runpy, sys\n"
             f"sys.argv = ['hcgnet', *{argv!r}]\n"
             "try:\n    runpy.run_module('hcgnet', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('imported:', *sorted({'torch', 'timm'} & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "hcgnet-switches" in result.stdout or "--grid" in result.stdout
    assert result.stdout.splitlines()[-1] == "imported:", result.stdout + result.stderr

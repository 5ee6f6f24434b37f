"""The grid's results, rebuilt from the run folders' own files every time (never from memory):
``results.json`` (test accuracy and its test images), ``metrics.csv`` (steps taken, training images/s),
``config.yaml`` and the weights' metadata (the network, for parameters and multiply-adds), ``attack-<attack>.json``
(accuracy under each attack, and the images it scored).

Writes ``runs.csv`` (one row per run), ``summary.csv`` and ``summary.md`` (per variant: what it changes, n,
mean ± std, 95% t-interval, parameters, multiply-adds, images/s, the test images each score rests on, and the
paired difference to the base with its interval and verdict), and ``ablation.png``. The CSV files keep the
intervals as computed; summary.md and ablation.png show them clipped to what the score can take (accuracy
[0, 100], a difference [-100, 100])."""
import csv
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from hcgnet.ablate.grid import BASE, HOW_TO_RUN, PlannedRun, identity
from hcgnet.ablate.runs import attack_results, build, model_options
from hcgnet.ablate.stats import clip, interval_text, mean_interval, paired_difference
from hcgnet.files import atomic_path
from hcgnet.training.config import FIELDS, TrainConfig

RESULTS = ("summary.md", "summary.csv", "runs.csv", "ablation.png")
SCORE = "test_top1"
# Not "attack_...": those keys are the scores.
ATTACK_IMAGES = "test_images_"
# Every score is an accuracy (a fraction): what its interval, and a difference's, are clipped to when shown.
ACCURACY, DIFFERENCE = (0.0, 1.0), (-1.0, 1.0)


def _network_size(folder: Path, saved: Dict[str, Any], cache: Dict) -> Dict[str, Optional[int]]:
    """Parameters and multiply-adds of the run's network, built (shapes only) from its config and weights' metadata."""
    from hcgnet.complexity import count_macs, count_params
    from hcgnet.models.checkpoints import read_metadata

    weights = folder / "best.safetensors"
    if not weights.is_file():
        return {"params": None, "macs": None}
    meta = read_metadata(weights)
    size = json.loads(meta["data_config"])["input_size"]
    config = TrainConfig(**{k: v for k, v in saved.items() if k in FIELDS})
    key = (identity({k: v for k, v in saved.items() if k not in ("seed",)}), meta["num_classes"], meta["in_chans"],
           tuple(size))
    if key not in cache:
        model = build(config, int(meta["num_classes"]), int(meta["in_chans"]))
        cache[key] = {"params": count_params(model), "macs": count_macs(model, size)}
    return cache[key]


def _metrics(folder: Path) -> Dict[str, Optional[float]]:
    path = folder / "metrics.csv"
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    speeds = [float(r["images_per_s"]) for r in rows if r.get("images_per_s")]
    return {"steps": int(rows[-1]["step"]) if rows else None,
            "images_per_s": sum(speeds) / len(speeds) if speeds else None}


def _attack(folder: Path, run_identity: str) -> Dict[str, Any]:
    """Accuracy under each attack at each eps (keys ``attack_<attack>_<eps>``) and the test images each attack
    scored (``test_images_<attack>``: --attack-limit may have cut them), from the run's own files."""
    found: Dict[str, Any] = {}
    for result in attack_results(folder, run_identity):
        label = attack_label(result)
        for row in result["rows"]:
            found[attack_score(label, row["eps"])] = row["accuracy"]
        found[ATTACK_IMAGES + label] = _span(row.get("images") for row in result["rows"])
    return found


def attack_label(result: Dict[str, Any]) -> str:
    """An attack by name and, for PGD, its settings (``pgd-10steps``, ``pgd-5steps-size0.01-random0``): PGD
    of other steps, step size or start is another attack, so its scores are never put under one heading."""
    if result["attack"] != "pgd" or not result.get("steps"):
        return result["attack"]
    label = f"pgd-{result['steps']}steps"
    if isinstance(result.get("step_size"), (int, float)):  # else the default, "2.5*eps/steps"
        label += f"-size{result['step_size']:g}"
    if result.get("random_start"):
        label += f"-random{result.get('seed', 0)}"
    return label


PGD_LABEL = re.compile(r"^pgd-(\d+)steps(?:-size(.+?))?(?:-random(\d+))?$")


def attack_words(label: str) -> str:
    """:func:`attack_label` in words: ``pgd, 5 steps of 2.5 eps/5 from the image``."""
    found = PGD_LABEL.match(label)
    if not found:
        return label
    steps, size, seed = found.groups()
    start = "from the image" if seed is None else f"from a random start (seed {seed})"
    return f"pgd, {steps} step{'' if steps == '1' else 's'} of {size or f'2.5 eps/{steps}'} {start}"


def _span(counts) -> Any:
    """One count, or ``low-high`` where they differ (None: none known)."""
    counts = sorted({c for c in counts if c is not None})
    if not counts:
        return None
    return counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def attack_score(attack: str, eps: float) -> str:
    """The summary's column stem for accuracy under ``attack`` (its :func:`attack_label`) at ``eps``."""
    return f"attack_{attack}_{eps:g}"


def score_name(score: str) -> str:
    if score == SCORE:
        return "test top-1"
    attack, eps = score[len("attack_"):].rsplit("_", 1)
    return f"test top-1 under {attack_words(attack)}, eps {eps}"


def collect(runs: Sequence[PlannedRun]) -> List[Dict[str, Any]]:
    """One row per planned run, from its folder's files; a run of another config or unfinished has no scores."""
    rows, cache = [], {}
    for run in runs:
        folder = Path(run.config.output)
        row: Dict[str, Any] = {"variant": run.variant, "seed": run.seed, "identity": run.identity,
                               "folder": str(folder)}
        saved_path, results = folder / "config.yaml", folder / "results.json"
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else None
        if saved is None or identity(saved) != run.identity or not results.is_file():
            row["status"] = "not run" if saved is None else ("other config" if identity(saved) != run.identity
                                                               else "unfinished")
            rows.append(row)
            continue
        result = json.loads(results.read_text())
        row.update({"status": "finished", "model": result["model"], SCORE: result["test_top1"],
                    "test_top5": result["test_top5"], "test_loss": result["test_loss"],
                    "test_images": result["test_images"], "best_val_top1": result["best_val_top1"],
                    "epochs": result["epochs"], "code": _code(result)})
        row.update(_metrics(folder))
        row.update(_network_size(folder, saved, cache))
        row.update(_attack(folder, run.identity))
        rows.append(row)
    return rows


def _code(result: Dict[str, Any]) -> Optional[str]:
    """The code a run was trained with, from its results.json (``hcgnet 0.1.0 <commit>``); None before it was
    recorded. Two runs of one identity under other code can differ by a point or two (ABLATIONS.md)."""
    recorded = result.get("provenance") or {}
    if "hcgnet" not in recorded:
        return None
    return " ".join(["hcgnet", recorded["hcgnet"], *([recorded["git_commit"]] if recorded.get("git_commit") else [])])


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def changes(runs: Sequence[PlannedRun]) -> Dict[str, str]:
    """What each variant changes from the base (``option: value``, a switch by its own name), read from the
    planned configs; the base is shown by its model."""
    configs = {}
    for run in runs:
        configs.setdefault(run.variant, run.config)
    base = configs.get(BASE)
    shown = {}
    for variant, config in configs.items():
        if variant == BASE or base is None:
            shown[variant] = f"model: {config.model}"
            continue
        mine, theirs = config.to_dict(), base.to_dict()
        skip = {*HOW_TO_RUN, "seed", "model_kwargs", "stem"}  # the switches (and stem) are compared one by one
        diff = [f"{k}: {_value(v)}" for k, v in mine.items() if k not in skip and v != theirs.get(k)]
        switches, base_switches = model_options(config), model_options(base)
        diff += [f"{k}: {_value(v)}" for k, v in switches.items() if v != base_switches.get(k, object())]
        diff += [f"{k}: (default)" for k in base_switches if k not in switches]
        shown[variant] = ", ".join(diff) or "(nothing)"
    return shown


def _scores(rows: List[Dict[str, Any]]) -> List[str]:
    keys = [SCORE]
    for row in rows:
        keys += [k for k in row if k.startswith("attack_") and k not in keys]
    return keys


def _image_counts(rows: List[Dict[str, Any]]) -> List[str]:
    keys = ["test_images"]
    for row in rows:
        keys += [k for k in row if k.startswith(ATTACK_IMAGES) and k not in keys]
    return keys


def images_text(table: List[Dict[str, Any]]) -> str:
    """On how many test images the scores rest: once if every variant's runs agree, else per variant."""
    def counts(key: str) -> str:
        found = {e["variant"]: (f"{e[key]:,}" if isinstance(e[key], int) else str(e[key]))
                 for e in table if e.get(key) is not None}
        if len(set(found.values())) == 1:
            return next(iter(found.values()))
        return ", ".join(f"{variant} {c}" for variant, c in found.items())

    test = counts("test_images") if any(e.get("test_images") is not None for e in table) else ""
    if not test:
        return ""
    text = f"test top-1 rests on {test} test images per run"
    attacks = {key[len(ATTACK_IMAGES):]: counts(key) for key in _image_counts(table)[1:]}
    if len(set(attacks.values())) == 1:
        text += f", accuracy under attack on {next(iter(attacks.values()))} of them"
    elif attacks:
        text += ", accuracy under " + ", under ".join(f"{name} on {c}" for name, c in attacks.items()) + " of them"
    return text


def variant_table(rows: List[Dict[str, Any]], variants: Sequence[str]) -> List[Dict[str, Any]]:
    """Per variant and score: n, mean, std, 95% interval; the paired difference to the base and its verdict."""
    finished = [r for r in rows if r["status"] == "finished"]
    table = []
    for variant in variants:
        mine = [r for r in finished if r["variant"] == variant]
        entry: Dict[str, Any] = {"variant": variant, "n": len(mine)}
        for key in ("model", "params", "macs"):
            entry[key] = mine[0].get(key) if mine else None
        speeds = [r["images_per_s"] for r in mine if r.get("images_per_s") is not None]
        entry["images_per_s"] = sum(speeds) / len(speeds) if speeds else None
        for key in _image_counts(finished):  # what each score rests on
            entry[key] = _span(r.get(key) for r in mine)
        for score in _scores(finished):
            values = {r["seed"]: r[score] for r in mine if r.get(score) is not None}
            base = {r["seed"]: r[score] for r in finished if r["variant"] == BASE and r.get(score) is not None}
            stats = mean_interval([values[s] for s in sorted(values)])
            entry.update({f"{score}_{k}": stats[k] for k in ("mean", "std", "low", "high")})
            if variant != BASE:
                diff = paired_difference(values, base)
                entry.update({f"{score}_diff_n": diff["n"], f"{score}_diff_mean": diff["mean"],
                              f"{score}_diff_low": diff["low"], f"{score}_diff_high": diff["high"],
                              f"{score}_verdict": diff["verdict"]})
        table.append(entry)
    return table


def asked_budget(runs: Sequence[PlannedRun]) -> str:
    """Every run's budget as asked (``120 optimiser steps (one epoch cut short)``, ``10 epochs``)."""
    c = runs[0].config
    if c.max_steps_per_epoch and c.epochs == 1:
        return f"{c.max_steps_per_epoch} optimiser steps (one epoch cut short)"
    return f"{c.epochs} epochs" + (f" of at most {c.max_steps_per_epoch} steps" if c.max_steps_per_epoch else "")


def budget_text(runs: Sequence[PlannedRun], rows: List[Dict[str, Any]]) -> str:
    c, budget = runs[0].config, asked_budget(runs)
    steps = sorted({r["steps"] for r in rows if r.get("steps") is not None})
    taken = ""
    if len(steps) == 1:
        taken = f"; {steps[0]} steps taken by every run"
    elif steps:
        taken = f"; steps taken range from {steps[0]} to {steps[-1]} (the variants' epochs differ)"
    if steps and c.epochs == 1 and c.max_steps_per_epoch and steps[0] < c.max_steps_per_epoch:
        taken += " (fewer than asked: --steps stops within one epoch; use --epochs for more)"
    return f"budget per run: {budget}{taken}"


def _write_csv(path: Path, rows: List[Dict[str, Any]], digits: Optional[int] = None) -> None:
    """``digits``: floats written to that many significant digits (the statistics are computed unrounded)."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if digits:
        rows = [{k: float(f"{v:.{digits}g}") if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def _count(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def few_seeds(table: List[Dict[str, Any]], scores: List[str]) -> bool:
    """Whether some mean or paired difference rests on 1 or 2 seeds."""
    counts = [e["n"] for e in table] + [e.get(f"{score}_diff_n") for e in table for score in scores]
    return any(n is not None and 0 < n < 3 for n in counts)


def markdown(table: List[Dict[str, Any]], scores: List[str], title: str, budget: str) -> str:
    # said only where it applies: a 10-seed summary needs no warning about 2 seeds
    caution = (" With 2 seeds t = 12.71, so an interval says little before 3 or more."
               if few_seeds(table, scores) else "")
    lines = [f"# {title}", "", budget, "",
             "Accuracy in percent: mean ± std over seeds and the 95% t-interval of the mean; Δ: the paired difference "
             "to the base over the seeds both finished (same data order, hold-out and augmentation per seed), its "
             "95% t-interval and verdict (undecided: the interval contains 0, or there is none: one seed, or "
             "the same difference at every seed; -: no seed finished for both). "
             "Intervals are shown clipped to what they can take (accuracy [0, 100], Δ [-100, 100]; summary.csv "
             f"keeps them unclipped).{caution}", ""]
    for number, score in enumerate(scores):
        costs = number == 0   # a variant's size and speed once, in the first table: the attacks' only repeat them
        lines += [f"## {score_name(score)}", "",
                  "| variant | changes | n | top-1 | 95% CI | " + "params | MACs | images/s | " * costs
                  + "Δ vs base | Δ 95% CI | verdict |",
                  "|---" * (11 if costs else 8) + "|"]
        for e in table:
            mean, ci = interval_text({k: e.get(f"{score}_{k}") for k in ("mean", "std", "low", "high")},
                                     bounds=ACCURACY)
            if e["variant"] == BASE:
                dmean, dci, verdict = "(base)", "", ""
            else:
                dmean, dci = interval_text({k: e.get(f"{score}_diff_{k}") for k in ("mean", "low", "high")},
                                           bounds=DIFFERENCE)
                verdict = e.get(f"{score}_verdict", "-")  # no finished runs: nothing to decide on
            speed = "-" if e["images_per_s"] is None else f"{e['images_per_s']:.1f}"
            what = e.get("changes") or e.get("model") or "-"
            cost = f"{_count(e['params'])} | {_count(e['macs'])} | {speed} | " if costs else ""
            lines.append(f"| {e['variant']} | {what.replace('|', '/')} | {e['n']} | {mean} | {ci} | {cost}{dmean} "
                         f"| {dci} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def _error_bar(entry: Dict[str, Any], prefix: str, centre: float, bounds) -> Optional[List[List[float]]]:
    """matplotlib's xerr (in percent) of the interval ``prefix`` low/high, clipped to ``bounds``."""
    if entry.get(prefix + "low") is None:
        return None
    low, high = clip(entry[prefix + "low"], bounds), clip(entry[prefix + "high"], bounds)
    return [[100 * (centre - low)], [100 * (high - centre)]]


def plot(table: List[Dict[str, Any]], path: Path, title: str) -> None:
    """Top-1 per variant with its 95% interval (the base in another colour), and the paired differences."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["variant"] for e in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 2), sharey=True)
    for i, e in enumerate(table):
        colour = "tab:red" if e["variant"] == BASE else "tab:blue"
        mean = e.get(f"{SCORE}_mean")
        if mean is not None:
            left.errorbar([100 * mean], [i], xerr=_error_bar(e, f"{SCORE}_", mean, ACCURACY), fmt="o", color=colour,
                          capsize=4)
        diff = e.get(f"{SCORE}_diff_mean")
        if diff is not None:
            right.errorbar([100 * diff], [i], xerr=_error_bar(e, f"{SCORE}_diff_", diff, DIFFERENCE), fmt="o",
                           color="tab:blue", capsize=4)
    right.axvline(0, color="tab:red", linestyle="--", linewidth=1)
    left.set_yticks(range(len(names)), names)
    for label in left.get_yticklabels():
        if label.get_text() == BASE:
            label.set_color("tab:red")
    left.invert_yaxis()
    left.set_xlabel("test top-1 (%), mean and 95% t-interval (clipped to 0-100)")
    right.set_xlabel("paired difference to the base (percentage points), 95% t-interval")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def summarise(runs: Sequence[PlannedRun], output: str, title: str = "ablation") -> Dict[str, Any]:
    """Write runs.csv, summary.csv, summary.md and ablation.png into ``output`` from the run folders' files."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(runs)
    variants = list(dict.fromkeys(r.variant for r in runs))
    shown = changes(runs)
    table = [{"variant": e["variant"], "changes": shown[e["variant"]], **e} for e in variant_table(rows, variants)]
    scores = _scores([r for r in rows if r["status"] == "finished"])
    budget, scored = budget_text(runs, rows), images_text(table)
    _write_csv(out / "runs.csv", rows)
    # the budget as asked once per row (a reader of one row, or of several grids' rows, needs it); the steps
    # each variant's runs took are its own column (summary.md's budget line says both once)
    steps = {v: _span(r.get("steps") for r in rows if r["variant"] == v and r["status"] == "finished")
             for v in variants}
    _write_csv(out / "summary.csv", [{**e, "budget": asked_budget(runs), "steps": steps[e["variant"]]}
                                     for e in table], digits=6)
    with atomic_path(out / "summary.md") as tmp:
        Path(tmp).write_text(markdown(table, scores, title, f"{budget}; {scored}" if scored else budget))
    plot(table, out / "ablation.png", "\n".join(line for line in (title, budget, scored) if line))
    return {"rows": rows, "table": table, "budget": budget, "scored": scored,
            "files": [str(out / name) for name in RESULTS]}

"""Running a grid: every (variant, seed) is one ``hcgnet.training.fit`` run in ``runs/<variant>/seed<k>/``,
resumed from its ``last.pt`` when it was interrupted, skipped when it has finished with the same config.

Executors: in this process (``jobs=1``), ``jobs`` processes at once on this machine, or one submitit job per
run (``slurm``; ``submitit-local`` runs the same jobs as local processes, to try the cluster path)."""
import importlib.util
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from hcgnet.ablate.grid import GridError, PlannedRun, changed_settings, identity, identity_values
from hcgnet.errors import HCGNetError, check_whole
from hcgnet.training.config import TrainConfig

EXECUTORS = ("local", "slurm", "submitit-local")


def attack_file(name: str) -> str:
    """Where a finished run's accuracy under attack ``name`` is kept, beside its results.json."""
    return f"attack-{name}.json"


def model_options(config: TrainConfig) -> Dict[str, Any]:
    """The keyword arguments of ``create_model`` that change the network a run trains (not its data)."""
    from hcgnet.models.registry import parse_model_kwargs

    options = parse_model_kwargs(config.model_kwargs)  # the design switches
    if config.stem:
        options["stem"] = config.stem
    return options


def build(config: TrainConfig, num_classes: int = 10, in_chans: int = 3):
    """The network of ``config`` on the meta device (shapes only: no memory, no arithmetic)."""
    import torch

    from hcgnet.models import create_model

    with torch.device("meta"):
        return create_model(config.model, num_classes=num_classes, in_chans=in_chans, **model_options(config))


def check_buildable(runs: Sequence[PlannedRun]) -> None:
    """Build every variant's network once before any run starts: an unknown model, switch or switch value
    fails here in one line, not hours into the grid."""
    seen = set()
    for run in runs:
        key = (run.config.model, json.dumps(model_options(run.config), sort_keys=True, default=str))
        if key in seen:
            continue
        seen.add(key)
        try:
            build(run.config)
        except HCGNetError as e:
            raise GridError(f"variant {run.variant}: {e}") from None
        except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, NotImplementedError) as e:
            # a switch the model lacks, a value it cannot take
            raise GridError(f"variant {run.variant}: cannot build {run.config.model} with "
                            f"{model_options(run.config)}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            ) from None


def check_executor(executor: str, jobs: int = 1) -> None:
    """Refuse, before anything is written, an executor that cannot run here: submitit missing, or Slurm's
    commands not on this machine (submitit would fail with a traceback once the runs start)."""
    if jobs < 1:
        raise GridError(f"--jobs must be 1 or more, got {jobs}")
    if executor not in EXECUTORS:
        raise GridError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local":
        return
    if importlib.util.find_spec("submitit") is None:
        raise GridError(f"--executor {executor} needs submitit: pip install 'hcgnet[cluster]'")
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if executor == "slurm" and missing:
        raise GridError(f"--executor slurm: Slurm not found on this machine (no {' or '.join(missing)} on PATH); "
                        "run hcgnet ablate on a login node of a Slurm cluster, or leave --executor out to run "
                        "the grid here")


def check_data(runs: Sequence[PlannedRun]) -> None:
    """Find every run's data before any run starts (a missing folder or dataset fails here in one line, not
    in the first run after its folder is made): an image folder's layout (its images are read by the run),
    a built-in dataset's files (nothing downloaded: ablate does not download)."""
    from hcgnet.data import DataError, build_data, spec_folder
    from hcgnet.data.image_folder import layout

    seen = set()
    for run in runs:
        c = run.config
        if (c.data, c.data_dir, c.image_size) in seen:
            continue
        seen.add((c.data, c.data_dir, c.image_size))
        try:
            folder = spec_folder(c.data)
            if folder is not None:
                layout(folder)
            else:
                build_data(c.data, c.data_dir, image_size=c.image_size, download=c.download)
        except DataError as e:
            raise GridError(f"variant {run.variant}: {e}") from None


def status(run: PlannedRun) -> str:
    """``new``, ``finished``, ``unfinished`` (resumable) or ``changed`` (its folder holds a run of another config)."""
    folder = Path(run.config.output)
    saved = folder / "config.yaml"
    if not saved.is_file():
        return "changed" if (folder / "last.pt").exists() or (folder / "results.json").exists() else "new"
    try:
        before = identity(yaml.safe_load(saved.read_text()) or {})
    except yaml.YAMLError:
        return "changed"
    if before != run.identity:
        return "changed"
    return "finished" if (folder / "results.json").is_file() else "unfinished"


def check_runs(runs: Sequence[PlannedRun], force: bool) -> Dict[str, str]:
    """The status of every run, refusing (unless ``force``) a folder that holds a run of another config: a
    changed config is a new run, never a silent reuse of the old one."""
    states = {}
    for run in runs:
        states[run.config.output] = status(run)
        if states[run.config.output] == "changed" and not force:
            raise GridError(f"{run.config.output} holds a run of another config than {run.label} now has "
                            f"({what_changed(run)}); pass --force to replace it, or choose another --output")
    return states


def what_changed(run: PlannedRun) -> str:
    """How the run saved in ``run``'s folder differs from the planned one (``max_steps_per_epoch 40 -> 41``):
    its config.yaml against the planned config, setting by setting."""
    saved = Path(run.config.output) / "config.yaml"
    if not saved.is_file():
        return "its config.yaml is missing"
    try:
        before = yaml.safe_load(saved.read_text()) or {}
    except yaml.YAMLError:
        before = None
    if not isinstance(before, dict):
        return "its config.yaml cannot be read"
    return changed_settings(identity_values(before), identity_values(run.config.to_dict())) or "the same settings"


def check_attack_options(attacks: Sequence[Dict[str, Any]]) -> None:
    """ablate's own refusals of the attack options, named as ablate names them (hcgnet attack's --steps and
    --limit are ablate's --attack-steps and --attack-limit; --steps is ablate's training budget)."""
    for attack in attacks:
        options = attack.get("options", {})
        for option in ("steps", "limit"):
            if options.get(option) is not None:
                check_whole(f"--attack-{option}", options[option], error=GridError)


def check_attacks(runs: Sequence[PlannedRun], attacks: Sequence[Dict[str, Any]], force: bool) -> None:
    """Refuse (unless ``force``) an attack asked with other settings (eps, steps, limit) than the one a run
    already holds: its attack-<name>.json would be replaced, and the summary with it, without a word."""
    if force:
        return
    for run in runs:
        made = {r["attack"]: r.get("asked") or {} for r in attack_results(Path(run.config.output), run.identity)}
        for attack in attacks:
            before = made.get(attack["attack"])
            if before is not None and _attack_settings(before) != _attack_settings(attack):
                path = Path(run.config.output) / attack_file(attack["attack"])
                raise GridError(f"{path} holds {attack['attack']} with other settings than asked "
                                f"({changed_settings(_attack_settings(before), _attack_settings(attack))}); ask "
                                "for the same settings, pass --force to replace it in every run, or choose "
                                "another --output")


def _config_for(run: PlannedRun, state: str) -> Dict[str, Any]:
    values = run.config.to_dict()
    values["resume"] = state == "unfinished"
    values["overwrite"] = state == "changed"  # the trainer's --overwrite keeps the old run until the new one ends
    return values


def attack_run(folder: str, data: str, data_dir: Optional[str], attack: Dict[str, Any], run_identity: str,
               log: Callable = print) -> None:
    """Accuracy under ``attack`` ({"attack", "eps", "options"}) of a finished run's chosen weights on its test
    set, written to ``folder/attack-<attack>.json`` with the run's identity (a replaced run leaves its old
    file behind, which this identity then tells apart)."""
    from hcgnet.analysis.attack import attack_checkpoints
    from hcgnet.files import write_json

    result = attack_checkpoints([str(Path(folder) / "best.safetensors")], data, attack["attack"], attack["eps"],
                                data_dir=data_dir, split="test", **attack.get("options", {}))
    result["asked"], result["run"] = attack, run_identity
    write_json(Path(folder) / attack_file(attack["attack"]), result, default=str)
    log(f"attacked with {attack['attack']} at eps {', '.join(f'{e:g}' for e in attack['eps'])}")


def attack_results(folder: Path, run_identity: str) -> List[Dict[str, Any]]:
    """The run's ``attack-*.json`` files that were written for this very run."""
    results = []
    for path in sorted(Path(folder).glob(attack_file("*"))):
        result = json.loads(path.read_text())
        if result.get("run") == run_identity:
            results.append(result)
    return results


def _attack_settings(asked: Dict[str, Any]) -> Dict[str, Any]:
    """An attack as asked ({"attack", "eps", "options"}), as the settings a user gave; eps in increasing order
    (the order changes no accuracy; hcgnet attack once kept it as given)."""
    return {"attack": asked.get("attack"), "eps": sorted(asked.get("eps") or []), **asked.get("options", {})}


def attacks_todo(folder: Path, attacks: Sequence[Dict[str, Any]], run_identity: str) -> List[Dict[str, Any]]:
    """The attacks not yet made on this very run with these very settings."""
    done = [_attack_settings(r.get("asked") or {}) for r in attack_results(folder, run_identity)]
    return [a for a in attacks if _attack_settings(a) not in done]


def train_run(values: Dict[str, Any], label: str, threads: Optional[int] = None,
              attacks: Sequence[Dict[str, Any]] = (), log: Optional[Callable] = None) -> Dict[str, Any]:
    """One run of the grid (what each job executes): train, or resume, or nothing if it has finished; then
    the attacks asked that it has not had yet. Its log lines carry ``[label]``."""
    import torch

    from hcgnet.training import fit, make_config

    if threads:
        torch.set_num_threads(threads)
    say = log or (lambda line: print(f"[{label}] {line}", flush=True))
    config = make_config(overrides=values)
    folder = Path(config.output)
    if not (folder / "results.json").is_file() or values.get("overwrite"):
        fit(config, log=say)
    run_identity = identity(config.to_dict())
    for attack in attacks_todo(folder, attacks, run_identity):
        attack_run(str(folder), config.data, config.data_dir, attack, run_identity, say)
    return json.loads((folder / "results.json").read_text())


def _interrupted(e: HCGNetError, run: PlannedRun, i: int, total: int) -> HCGNetError:
    from hcgnet.training.interrupts import TrainingInterrupted

    if isinstance(e, TrainingInterrupted):
        return TrainingInterrupted(f"interrupted in run {i}/{total} ({run.label}); its last.pt is kept: run the "
                                   "same hcgnet ablate command again to continue", e.exit_code - 128)
    return type(e)(f"run {i}/{total} ({run.label}): {e}")


def run_grid(runs: Sequence[PlannedRun], jobs: int = 1, executor: str = "local", force: bool = False,
             attacks: Sequence[Dict[str, Any]] = (), log: Callable = print,
             slurm_parameters: Optional[Dict[str, Any]] = None, folder: Optional[str] = None) -> Dict[str, str]:
    """Carry out every run not finished yet; returns each run folder's status before this call. ``folder``:
    where submitit keeps its job logs (default: beside the runs)."""
    check_executor(executor, jobs)
    check_attack_options(attacks)
    states = check_runs(runs, force)
    check_attacks(runs, attacks, force)
    total = len(runs)
    todo = []
    for i, run in enumerate(runs, 1):
        state = states[run.config.output]
        if state == "finished" and not attacks_todo(Path(run.config.output), attacks, run.identity):
            log(f"run {i}/{total}: {run.label}: finished earlier, kept")
        else:
            todo.append((i, run, state))
    if executor != "local":
        _submitit(todo, total, executor, attacks, log, slurm_parameters or {},
                  folder or str(Path(runs[0].config.output).parents[2] / "submitit"))
    elif jobs == 1:
        for i, run, state in todo:
            log(f"run {i}/{total}: {run.label}" + (" (resuming)" if state == "unfinished" else ""))
            try:
                train_run(_config_for(run, state), run.label, attacks=attacks,
                          log=lambda line, label=run.label: log(f"[{label}] {line}"))
            except HCGNetError as e:
                raise _interrupted(e, run, i, total) from None
    else:
        _pool(todo, total, jobs, attacks, log)
    return states


def _pool(todo, total: int, jobs: int, attacks, log: Callable) -> None:
    # spawn: a forked copy of a process that has used torch's thread pools can hang
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = []
        for i, run, state in todo:
            log(f"run {i}/{total}: {run.label} queued" + (" (resuming)" if state == "unfinished" else ""))
            futures.append((i, run, pool.submit(train_run, _config_for(run, state), run.label, threads, attacks)))
        for i, run, future in futures:
            try:
                future.result()
            except HCGNetError as e:
                for _, _, other in futures:
                    other.cancel()
                raise _interrupted(e, run, i, total) from None
            log(f"run {i}/{total}: {run.label} finished")


def _remove_if_made(folder: str, made: bool) -> None:
    if made:
        shutil.rmtree(folder, ignore_errors=True)


def _submitit(todo, total: int, executor: str, attacks, log: Callable, parameters: Dict[str, Any],
              folder: str) -> None:
    import submitit  # check_executor has found it

    made = not Path(folder).exists()   # submitit creates its log folder at once: a refusal removes it again
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm" if executor == "slurm" else "local")
        ex.update_parameters(**parameters)
    except RuntimeError as e:  # "Could not detect srun": Slurm's commands are there but do not answer
        _remove_if_made(folder, made)
        raise GridError(f"--executor {executor}: {str(e).splitlines()[0]}; run hcgnet ablate on a login node of a "
                        "Slurm cluster, or leave --executor out to run the grid here") from None
    except (TypeError, ValueError, NameError) as e:  # submitit names an unknown parameter in a NameError
        _remove_if_made(folder, made)
        raise GridError(f"--slurm-parameters: {str(e).splitlines()[0]}") from None
    submitted = []
    for i, run, state in todo:
        job = ex.submit(train_run, _config_for(run, state), run.label, None, attacks)
        log(f"run {i}/{total}: {run.label} submitted as job {job.job_id}")
        submitted.append((i, run, job))
    failed = []
    for i, run, job in submitted:
        try:
            job.result()
            log(f"run {i}/{total}: {run.label} finished (job {job.job_id})")
        except Exception as e:  # submitit's FailedJobError carries the job's whole traceback
            text = str(e).strip().splitlines()
            failed.append(f"run {i}/{total} ({run.label}, job {job.job_id}): {text[-1] if text else type(e).__name__}")
    if failed:
        raise HCGNetError(f"{len(failed)} of {len(submitted)} jobs failed; first: {failed[0]} (logs in {folder}); "
                          "run the same hcgnet ablate command again to continue")

"""``ablate(...)``: the whole of ``hcgnet ablate`` as one library call: plan the grid, refuse what cannot work
before any run starts, carry out the runs, and summarise them (also after a failure or Ctrl-C: what has
finished so far)."""
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from hcgnet.ablate.grid import Grid, GridError, PlannedRun, plan, run_folder
from hcgnet.ablate.runs import (check_attack_options, check_attacks, check_buildable, check_data, check_executor,
                                check_runs, run_grid, status)
from hcgnet.ablate.summary import RESULTS, summarise
from hcgnet.errors import plural
from hcgnet.files import check_output_folder


def ablate(grid: Grid, output: str, seeds: int, epochs: Optional[int] = None, steps: Optional[int] = None,
           options: Optional[Mapping[str, Any]] = None, jobs: int = 1, executor: str = "local", force: bool = False,
           attacks: Sequence[Dict[str, Any]] = (), slurm_parameters: Optional[Dict[str, Any]] = None,
           log: Callable = print) -> Dict[str, Any]:
    """Run ``grid`` (``seeds`` paired seeds, a budget of ``epochs`` or ``steps``) into ``output``; returns
    :func:`~hcgnet.ablate.summary.summarise`'s result. ``attacks``: each ``{"attack", "eps", "options"}``
    (options: :func:`hcgnet.analysis.attack.attack_checkpoints`'s ``limit``, ``steps``), made on every finished
    run's test set."""
    runs = plan(grid, output, seeds, epochs, steps, options)
    check_attack_options(attacks)
    check_executor(executor, jobs)
    check_data(runs)
    # The summary files are rebuilt on every call; a folder holding them without runs/ holds something else.
    check_output_folder(output, "the ablation", () if (Path(output) / "runs").is_dir() else RESULTS, force)
    check_buildable(runs)
    check_runs(runs, force)  # a run folder of another config: refused here, not after run_grid began
    check_attacks(runs, attacks, force)  # an attack made with other settings: likewise
    log(f"{grid.name}: {plural(len(grid.names()), 'variant')} x {plural(seeds, 'seed')} = {plural(len(runs), 'run')} "
        f"in {output}")
    title = f"{grid.name} on {runs[0].config.data}"
    earlier = finished_further_seeds(grid, output, seeds, epochs, steps, options)
    if earlier:
        last = max(r.seed for r in earlier)
        log(f"the summary also covers {f'seeds {seeds}-{last}' if last > seeds else f'seed {seeds}'}, finished by "
            "an earlier call with more --seeds")
    summarised = sorted([*runs, *earlier], key=lambda r: (grid.names().index(r.variant), r.seed))
    try:
        run_grid(runs, jobs, executor, force, attacks, log, slurm_parameters)
    except BaseException as e:
        # A refusal (GridError) ran nothing: the summary already there stays as it is. After a failure or Ctrl-C
        # mid-grid the summary is rebuilt from the runs finished so far.
        if not isinstance(e, GridError) and (Path(output) / "runs").is_dir():
            try:
                summarise(summarised, output, title)  # what has finished so far
                log(f"the summary in {output} covers the runs finished so far")
            except Exception:  # the run's own error is the one to report
                pass
        raise
    return summarise(summarised, output, title)


def finished_further_seeds(grid: Grid, output: str, seeds: int, epochs: Optional[int] = None,
                           steps: Optional[int] = None, options: Optional[Mapping[str, Any]] = None) -> List[PlannedRun]:
    """The finished runs of this grid, with this budget and these options, at seeds ``seeds`` and above that an
    earlier call with a larger ``--seeds`` left in ``output``: the summary covers them too, so that a call with
    fewer seeds does not shrink it (runs of another config there are not this grid's, and are left out)."""
    found: List[PlannedRun] = []
    seed = seeds
    while any(run_folder(output, variant, seed).is_dir() for variant in grid.names()):
        found += [r for r in plan(grid, output, seed + 1, epochs, steps, options, first_seed=seed)
                  if status(r) == "finished"]
        seed += 1
    return found

"""``ablate(...)``: the whole of ``hcgnet ablate`` as one library call: plan the grid, refuse what cannot work
before any run starts, carry out the runs, and summarise them (also after a failure or Ctrl-C: what has
finished so far)."""
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from hcgnet.ablate.grid import Grid, GridError, plan
from hcgnet.ablate.runs import check_buildable, check_data, check_executor, check_runs, run_grid
from hcgnet.ablate.summary import RESULTS, summarise
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
    check_executor(executor, jobs)
    check_data(runs)
    # The summary files are rebuilt on every call; a folder holding them without runs/ holds something else.
    check_output_folder(output, "the ablation", () if (Path(output) / "runs").is_dir() else RESULTS, force)
    check_buildable(runs)
    check_runs(runs, force)  # a run folder of another config: refused here, not after run_grid began
    log(f"{grid.name}: {len(grid.names())} variants x {seeds} seeds = {len(runs)} runs in {output}")
    title = f"{grid.name} on {runs[0].config.data}"
    try:
        run_grid(runs, jobs, executor, force, attacks, log, slurm_parameters)
    except BaseException as e:
        # A refusal (GridError) ran nothing: the summary already there stays as it is. After a failure or Ctrl-C
        # mid-grid the summary is rebuilt from the runs finished so far.
        if not isinstance(e, GridError) and (Path(output) / "runs").is_dir():
            try:
                summarise(runs, output, title)  # what has finished so far
                log(f"the summary in {output} covers the runs finished so far")
            except Exception:  # the run's own error is the one to report
                pass
        raise
    return summarise(runs, output, title)

"""``hcgnet ablate``: a grid of variants x paired seeds, each an ordinary training run, and the summary of what
each variant changes (means, 95% t-intervals, paired differences to the base).

Only the grid (no torch) loads with the package; running and summarising on first use."""
from hcgnet.ablate.grid import BASE, Grid, GridError, PlannedRun, list_grids, load_grid, parse_grid, plan
from hcgnet.lazy import lazy_dir, lazy_exports

_LATER = {"ablate": "hcgnet.ablate.study", "check_buildable": "hcgnet.ablate.runs", "check_data": "hcgnet.ablate.runs",
          "check_executor": "hcgnet.ablate.runs", "run_grid": "hcgnet.ablate.runs", "summarise": "hcgnet.ablate.summary"}

__all__ = ["BASE", "Grid", "GridError", "PlannedRun", "ablate", "check_buildable", "check_data", "check_executor",
           "list_grids", "load_grid", "parse_grid", "plan", "run_grid", "summarise"]

__getattr__ = lazy_exports(__name__, _LATER)
__dir__ = lazy_dir(__name__, _LATER)

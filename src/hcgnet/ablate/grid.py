"""An ablation grid: a base (a model and any ``train`` option) and named variants, each a set of overrides of
the base; every (variant, seed) becomes one ordinary :class:`~hcgnet.training.TrainConfig`. No torch here, so
``hcgnet ablate --list-grids`` and the checks of a grid cost no import of it."""
import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from hcgnet.errors import HCGNetError
from hcgnet.training.config import FIELDS, ConfigError, RUN_FLAGS, TrainConfig, make_config, recorded_data

BASE = "base"
# Set by ablate itself, the same for every run of a grid: the seed pairs the runs, the budget is shared.
NOT_IN_GRID = ("seed", *RUN_FLAGS)
BUDGET = ("epochs", "max_steps_per_epoch")
# How a run is carried out, not what it computes: left out of a run's identity.
HOW_TO_RUN = (*RUN_FLAGS, "workers", "log_every", "checkpoint_every", "data_dir")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GridError(HCGNetError):
    """A grid file that cannot be read, or a variant that cannot be trained."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int):
        super().__init__(key, line)
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: plain YAML keeps the last one, so a second
    variant of the same name would silently replace the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # before merge keys (<<) are flattened: a key may override a merged one
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            if isinstance(key, (str, int, float, bool)):  # another key is refused later as no name
                seen.add(key)
        return super().construct_mapping(node, deep)


@dataclass
class Grid:
    name: str                        # the file's stem or the shipped grid's name
    base: Dict[str, Any]             # train options
    variants: Dict[str, Dict[str, Any]]  # name -> overrides of the base (not including the base itself)

    def names(self) -> List[str]:
        return [BASE, *self.variants]

    def options(self, variant: str) -> Dict[str, Any]:
        """The base with ``variant``'s overrides on top; mappings (``model_kwargs``) are merged key by key."""
        values = dict(self.base)
        for key, value in ({} if variant == BASE else self.variants[variant]).items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            values[key] = value
        return values


@dataclass
class PlannedRun:
    variant: str
    seed: int
    config: TrainConfig
    identity: str

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"


def list_grids() -> List[str]:
    return sorted(p.name[:-5] for p in resources.files("hcgnet.ablate").joinpath("grids").iterdir()
                  if p.name.endswith(".yaml"))


def grid_summary(name: str) -> str:
    """The first sentence of a shipped grid's leading comment, whole (it may run over several lines)."""
    text = resources.files("hcgnet.ablate").joinpath("grids", f"{name}.yaml").read_text()
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line[1:].strip())
    paragraph = " ".join(comment)
    end = re.search(r"[.!?](\s|$)", paragraph)  # "ABLATIONS.md:" or "e.g" ends no sentence
    return paragraph[:end.start() + 1] if end else paragraph


def load_grid(path_or_name: str) -> Grid:
    """A grid file, or a shipped grid by name (``hcgnet ablate --list-grids``)."""
    path = Path(path_or_name)
    if path.is_file():
        text, where, name = path.read_text(), str(path), path.stem
    elif path_or_name in list_grids():
        text = resources.files("hcgnet.ablate").joinpath("grids", f"{path_or_name}.yaml").read_text()
        where, name = f"grid {path_or_name}", path_or_name
    else:
        raise GridError(f"grid {path_or_name} is neither a file nor a shipped grid ({', '.join(list_grids())})")
    return parse_grid(text, where, name)


def parse_grid(text: str, where: str, name: str = "grid") -> Grid:
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise GridError(f"{where} line {e.line}: key {e.key!r} is given twice in one mapping (YAML would keep only "
                        "the last); rename or remove one") from None
    except yaml.YAMLError as e:
        raise GridError(f"{where} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise GridError(f"{where} must be a mapping with base: and variants:")
    unknown = sorted(set(values) - {"base", "variants"})
    if unknown:
        raise GridError(f"{where}: unknown key {unknown[0]!r}; a grid has base: (train options) and variants:")
    base = _options(values.get("base") or {}, f"{where}: base")
    variants = values.get("variants")
    if not variants:
        raise GridError(f"{where} has no variants: add variants: with at least one name: {{option: value}}")
    if not isinstance(variants, dict):
        raise GridError(f"{where}: variants must be a mapping of name: {{option: value}}")
    parsed = {}
    for vname, overrides in variants.items():
        vname = str(vname)
        if vname == BASE:
            raise GridError(f"{where}: variant name {BASE!r} is reserved for the grid's base (its base: options); "
                            "give this variant another name")
        if not NAME.match(vname):
            raise GridError(f"{where}: variant name {vname!r} must be letters, digits, '_', '-' or '.'")
        parsed[vname] = _options(overrides, f"{where}: variant {vname}")
        if not parsed[vname]:
            raise GridError(f"{where}: variant {vname} changes nothing; give it at least one option: value")
        budget = sorted(set(parsed[vname]) & set(BUDGET))
        if budget:
            raise GridError(f"{where}: variant {vname} sets {budget[0]}: the budget is the same for every variant; "
                            "set it in base: or with --epochs/--steps")
    return Grid(name, base, parsed)


def _options(values: Any, where: str) -> Dict[str, Any]:
    if not isinstance(values, dict):
        raise GridError(f"{where} must be a mapping of option: value, got {values!r}")
    named: Dict[str, Any] = {}
    given: Dict[str, str] = {}
    for key, value in values.items():
        option = str(key).replace("-", "_")
        if option in named:  # batch-size and batch_size: one option given twice, the last would win
            raise GridError(f"{where} sets {option} twice (as {given[option]!r} and {str(key)!r}); give it once")
        named[option], given[option] = value, str(key)
    fixed = sorted(set(named) & set(NOT_IN_GRID))
    if fixed:
        raise GridError(f"{where} sets {fixed[0]}: hcgnet ablate sets it (--seeds, --output)")
    unknown = [k for k in named if k not in FIELDS]
    if unknown:
        # the closest option, not all of them: a list of every option hides the one meant
        close = difflib.get_close_matches(unknown[0], [f for f in FIELDS if f not in NOT_IN_GRID], n=1)
        hint = (f"did you mean {close[0]}?" if close else
                "the options are hcgnet train's (hcgnet train --help); a model's switches go under model_kwargs")
        raise GridError(f"{where}: unknown option {unknown[0]!r}; {hint}")
    return named


def identity_values(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings that make a run's identity: every one that changes what it computes."""
    kept = {k: v for k, v in sorted(config.items()) if k not in HOW_TO_RUN}
    if kept.get("data"):  # a grid run before image folders were recorded absolute is the same run
        kept["data"] = recorded_data(kept["data"])
    return kept


def identity(config: Mapping[str, Any]) -> str:
    """A run's identity: a hash of every setting that changes what it computes."""
    return hashlib.sha256(json.dumps(identity_values(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def changed_settings(before: Mapping[str, Any], after: Mapping[str, Any], most: int = 3) -> str:
    """What differs, as ``key before -> after`` (``lr 0.05 -> 0.07``), the first ``most`` of them; compared as
    :func:`identity` compares them (a list and a tuple are the same)."""
    def same(key: str) -> bool:
        return (json.dumps(before.get(key), sort_keys=True, default=str)
                == json.dumps(after.get(key), sort_keys=True, default=str))

    keys = [k for k in dict.fromkeys([*after, *before]) if not same(k)]
    shown = [f"{k} {_shown(before.get(k))} -> {_shown(after.get(k))}" for k in keys[:most]]
    return ", ".join(shown) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def run_folder(output: str, variant: str, seed: int) -> Path:
    return Path(output) / "runs" / variant / f"seed{seed}"


def plan(grid: Grid, output: str, seeds: int, epochs: Optional[int] = None, steps: Optional[int] = None,
         options: Optional[Mapping[str, Any]] = None, first_seed: int = 0) -> List[PlannedRun]:
    """Every (variant, seed) as a checked TrainConfig, variant by variant, seeds ``first_seed`` to ``seeds - 1``.
    ``epochs`` or ``steps`` (one epoch cut at that many optimiser steps) is the budget of every run; ``options``
    (e.g. ``data``) go over the base."""
    if seeds < 1:
        raise GridError(f"--seeds must be 1 or more, got {seeds}")
    if epochs is not None and steps is not None:
        raise GridError("give the budget in --epochs or in --steps, not both")
    budget: Dict[str, Any] = {}
    if epochs is not None:
        budget = {"epochs": epochs}
    elif steps is not None:
        if steps < 1:
            raise GridError(f"--steps must be 1 or more, got {steps}")
        budget = {"epochs": 1, "max_steps_per_epoch": steps}
    runs = []
    for variant in grid.names():
        values = {**grid.options(variant), **{k: v for k, v in (options or {}).items() if v is not None}, **budget}
        for seed in range(first_seed, seeds):
            folder = run_folder(output, variant, seed)
            try:
                config = make_config(overrides={**values, "seed": seed, "output": str(folder)})
            except ConfigError as e:
                raise GridError(f"{grid.name}: variant {variant}: {e}") from None
            runs.append(PlannedRun(variant, seed, config, identity(config.to_dict())))
    return runs

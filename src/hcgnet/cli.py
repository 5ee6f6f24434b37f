"""The ``hcgnet`` command line: argument parsing only; every command calls the library."""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from hcgnet import __version__
from hcgnet.complexity import count_macs, count_params
from hcgnet.errors import HCGNetError
from hcgnet.models import VARIANTS, create_model, read_state_dict, save_safetensors
from hcgnet.models.checkpoints import load_state_dict_into, num_classes_in
from hcgnet.models.variants import resolve


def _info_rows(names: Sequence[str], num_classes: Optional[int]) -> List[dict]:
    rows = []
    for requested in names:
        name, variant = resolve(requested)
        classes = variant.num_classes if num_classes is None else num_classes
        with torch.device("meta"):  # shapes only: counting C costs no arithmetic
            model = create_model(requested, num_classes=classes)
        rows.append(dict(
            model=name if name in VARIANTS else "-",
            spec=variant.spec,
            input="x".join(map(str, variant.input_size[1:])),
            classes=classes,
            params=count_params(model),
            published_params=variant.published_params.get(classes),
            paper_params=variant.paper_params,
            gmacs=count_macs(model, variant.input_size) / 1e9,
            paper_gmacs=variant.paper_gmacs,
        ))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    rows = _info_rows(args.models or list(VARIANTS), args.num_classes)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("model", "architecture", "input", "classes", "params", "published params", "paper params",
              "GMACs", "paper GMACs")
    table = [header] + [(
        r["model"], r["spec"], r["input"], str(r["classes"]), f"{r['params']:,}",
        f"{r['published_params']:,}" if r["published_params"] else "-", r["paper_params"] or "-",
        f"{r['gmacs']:.3f}", r["paper_gmacs"] or "-",
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    print("GMACs are multiply-adds (10^9) of one forward pass at the input size, batch 1; the paper calls them "
          "FLOPs. 'published': exact parameter count of the published implementation.")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise HCGNetError(f"output {out} must end in .safetensors")
    if out.exists() and not args.force:
        raise HCGNetError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise HCGNetError(f"folder {out.parent} does not exist; create it first")
    state_dict, _ = read_state_dict(args.checkpoint)
    name, _ = resolve(args.model)
    classes = num_classes_in(state_dict)
    model = create_model(name, num_classes=classes)
    load_state_dict_into(model, state_dict, args.checkpoint)
    save_safetensors(model, out, {"model": name, "num_classes": model.num_classes})
    print(f"wrote {out}: {name}, {model.num_classes} classes, {count_params(model):,} parameters")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcgnet", description="HCGNet models: info and checkpoint conversion.")
    parser.add_argument("--version", action="version", version=f"hcgnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="parameters and multiply-adds of models, beside the paper's figures")
    info.add_argument("models", nargs="*", metavar="MODEL|SPEC",
                      help="variant names or specs such as 'HCGNet-(8,8,8)-(k=12,24,36)' (default: all variants)")
    info.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the variant's)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)

    convert = sub.add_parser("convert", help="turn a published checkpoint into a .safetensors file")
    convert.add_argument("checkpoint", help="published checkpoint, e.g. HCGNet_B_best.pth.tar")
    convert.add_argument("output", help="the .safetensors file to write")
    convert.add_argument("--model", required=True, help="variant name or spec the checkpoint belongs to")
    convert.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HCGNetError as e:
        print(f"hcgnet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

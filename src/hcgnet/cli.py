"""The ``hcgnet`` command line: argument parsing only; every command calls the library."""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from hcgnet import __version__
from hcgnet.complexity import count_macs, count_params
from hcgnet.data import error_message
from hcgnet.errors import HCGNetError
from hcgnet.models import VARIANTS, create_model, save_safetensors
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
    name, _ = resolve(args.model)
    model = create_model(name, checkpoint_path=args.checkpoint)
    save_safetensors(model, out, {"model_name": name, "num_classes": model.num_classes})
    print(f"wrote {out}: {name}, {model.num_classes} classes, {count_params(model):,} parameters")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hcgnet.training import TrainConfig, fit, make_config, resume_config
    from hcgnet.training.interrupts import TrainingInterrupted

    overrides = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if hasattr(args, name)}
    output = args.output or TrainConfig.output
    if args.resume and not (args.recipe or args.config) and (Path(output) / "config.yaml").is_file():
        config = resume_config(output, overrides)  # the run's own settings; flags given here on top
    else:
        config = make_config(args.recipe, args.config, overrides)
    try:
        fit(config)
    except TrainingInterrupted as e:
        print(f"hcgnet: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hcgnet.inference import evaluate_checkpoint

    m = evaluate_checkpoint(args.checkpoint, args.data, args.data_dir, args.split, args.batch_size, args.workers,
                            args.model, amp=args.amp, channels_last=args.channels_last)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(f"{args.checkpoint} on {args.data} ({args.split}, {m['count']} images): top-1 {100 * m['top1']:.2f}%, "
              f"top-5 {100 * m['top5']:.2f}%, loss {m['loss']:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hcgnet.inference import predict

    results = predict(args.checkpoint, args.images, args.topk, args.model)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {100 * t['probability']:6.2f}%  {t['class']}")
    return 0


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from hcgnet.training.config import FIELDS, option_type

    p.add_argument("--config", help="YAML file of options (flags given here override it)")
    helps = {
        "model": "variant name or spec, e.g. hcgnet_a1 or 'HCGNet-(8,8,8)-(k=12,24,36)'",
        "data": "cifar10, cifar100, fashion-mnist or imagefolder:PATH",
        "recipe": "a packaged recipe (see `hcgnet recipes`)",
        "output": "folder for checkpoints, metrics, curves (default runs/train)",
        "batch_size": "images per process and step",
        "amp": "none, bf16 (CPU/GPU) or fp16 (GPU)",
        "val_size": "images (or fraction if < 1) held out from the training set for validation",
        "checkpoint_every": "also save last.pt every N steps (0: epoch ends only)",
        "resume": "continue the run in --output exactly where it stopped",
        "overwrite": "replace the run in --output",
    }
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        kind = option_type(name)
        if name in ("resume", "overwrite"):
            p.add_argument(flag, action="store_true", default=None, help=helps.get(name))
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helps.get(name))
        else:
            p.add_argument(flag, type=kind, default=None, help=helps.get(name))


def cmd_export(args: argparse.Namespace) -> int:
    from hcgnet.export import export_model
    from hcgnet.inference import data_config_of, load_model

    out = Path(args.output)
    if out.exists() and not args.force:
        raise HCGNetError(f"{out} already exists; pass --force to replace it")
    model, meta = load_model(args.checkpoint, args.model)
    input_size = data_config_of(model, meta).input_size
    export_model(model, str(out), args.format, input_size)
    print(f"wrote {out}: {args.format}, dynamic batch and input size, checked against the eager model")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hcgnet.bench import benchmark, describe, plot, write_csv

    def both(value: str):
        return {"on": (True,), "off": (False,), "both": (False, True)}[value]

    def show(r):
        speed = f"{r['latency_ms']:8.1f} ms" if "latency_ms" in r else f"{r['images_per_s']:8.1f} img/s"
        print(f"{r['mode']:7s} {describe(r):40s} batch {r['batch']:4d} {'x'.join(map(str, r['size'])):>9s}"
              f"  {speed}  (spread {r['min_s']:.3f}-{r['max_s']:.3f} s)  +{r['peak_memory_added_mb']:.0f} MB"
              + (f"  loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}" if "final_loss" in r else ""), flush=True)

    for flag, path in (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot)):
        if path and not Path(path).resolve().parent.is_dir():  # found out now, not after an hour of timing
            raise HCGNetError(f"{flag}: folder {Path(path).parent} does not exist; create it first")
    batches = _int_list(args.batch_size, "--batch-size")
    sizes = [(s, s) for s in _int_list(args.size, "--size")] if args.size else None
    results = benchmark(args.model, args.modes.split(","), args.dtypes.split(","), both(args.channels_last),
                        both(args.memory_efficient), both(args.compile), steps=args.steps, warmup=args.warmup,
                        device=args.device, progress=None if args.json_only else show,
                        runtimes=args.runtimes.split(","), batches=batches, sizes=sizes, isolate=args.isolate)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "torch": torch.__version__,
                                               "threads": torch.get_num_threads(), "results": results}, indent=2))
    if args.csv:
        write_csv(results, args.csv)
    if args.plot:
        plot(results, args.plot, title=f"{args.model}, {torch.get_num_threads()} threads")
    return 0


def _int_list(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise HCGNetError(f"{flag} takes comma-separated whole numbers such as 32,64,128, got {text!r}") from None
    if min(values) < 1:
        raise HCGNetError(f"{flag} values must be 1 or more, got {text!r}")
    return values


def cmd_recipes(args: argparse.Namespace) -> int:
    from hcgnet.training.config import list_recipes, load_recipe

    for name in list_recipes():
        r = load_recipe(name)
        print(f"{name:18s} {r.get('model', '-'):10s} {r.get('data', '-'):14s} {r.get('epochs', '-')} epochs")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcgnet", description="HCGNet: model information, checkpoint conversion, training, evaluation, prediction and export.")
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

    train = sub.add_parser("train", help="train a model (also under torchrun for several processes)")
    _add_train_options(train)
    train.set_defaults(func=cmd_train)

    def add_checkpoint(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, help=".safetensors or .pt written by hcgnet train or convert")
        p.add_argument("--model", default=None, help="model name, for checkpoints that do not say (published ones)")

    ev = sub.add_parser("eval", help="top-1, top-5 and loss of a checkpoint on a dataset")
    add_checkpoint(ev)
    ev.add_argument("--data", required=True, help="cifar10, cifar100, fashion-mnist or imagefolder:PATH")
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--split", choices=("test", "val"), default="test")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                    help="autocast dtype: bf16 pays on CPUs with AVX512-BF16/AMX and on GPUs; fp16 on GPUs")
    ev.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="top-5 classes of image files")
    add_checkpoint(pr)
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="ONNX, TorchScript or torch.export (.pt2) file of a checkpoint")
    add_checkpoint(ex)
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript", "pt2"))
    ex.add_argument("--output", required=True)
    ex.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    ex.set_defaults(func=cmd_export)

    be = sub.add_parser("bench", help="training/inference speed and peak memory of configurations, in one process")
    be.add_argument("--model", default="hcgnet_a1")
    be.add_argument("--modes", default="train,infer", help="comma-separated: train, infer, latency (batch 1)")
    be.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16, fp16 (GPU)")
    for flag in ("channels-last", "memory-efficient", "compile"):
        be.add_argument(f"--{flag}", choices=("off", "on", "both"), default="off")
    be.add_argument("--runtimes", default="eager",
                    help="comma-separated: eager, torchscript, onnx, pt2 (exported runtimes time inference only)")
    be.add_argument("--batch-size", default="64", help="one batch size or a comma-separated sweep, e.g. 16,32,64")
    be.add_argument("--size", default=None, help="square input side or a sweep, e.g. 32,64 (default: the model's)")
    be.add_argument("--steps", type=int, default=10)
    be.add_argument("--warmup", type=int, default=3)
    be.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    be.add_argument("--isolate", action="store_true",
                    help="each configuration in a fresh process: exact peak memory for every one")
    be.add_argument("--json", default=None, help="also write the results here")
    be.add_argument("--csv", default=None, help="also write the results as CSV")
    be.add_argument("--plot", default=None, help="PNG of step time and peak memory against pixels per step")
    be.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    be.set_defaults(func=cmd_bench)

    rec = sub.add_parser("recipes", help="list the packaged training recipes")
    rec.set_defaults(func=cmd_recipes)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HCGNetError as e:
        print(f"hcgnet: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hcgnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``hcgnet`` command line: argument parsing only; every command calls the library.

Parsing imports neither torch nor timm (``--help``, ``--version``, ``recipes`` and usage errors answer at once):
each command imports what it needs, and the options of ``train`` and ``detect``, whose defaults come from
modules that import torch, are added only when that command is used (:class:`_LazyParser`).
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from hcgnet import __version__
from hcgnet.errors import HCGNetError, first_of, plural


def cmd_info_detection(args: argparse.Namespace) -> int:
    """``info --detection NAME|FILE``: a detector's parameters and multiply-adds beside the paper's Table 4; a
    file of ``hcgnet detect train`` is counted as the detector it holds."""
    from hcgnet.detection.complexity import (DEFAULT_IMAGE_SIZE, checkpoint_detection_info, detection_info,
                                             parse_image_size)
    from hcgnet.models.checkpoints import names_a_file

    if args.models or args.size is not None:
        raise HCGNetError("--detection takes one model of its own; drop the other model names and --size "
                          "(use --image-size HxW)")
    size = parse_image_size(args.image_size) if args.image_size else None
    if names_a_file(args.detection):
        if args.num_classes is not None or args.task is not None:
            raise HCGNetError(f"--num-classes and --task describe a detector; the checkpoint {args.detection} holds "
                              "its own: drop them")
        r = checkpoint_detection_info(args.detection, size)   # at its training size unless --image-size
    else:
        r = detection_info(args.detection, args.task or "mask", 91 if args.num_classes is None else args.num_classes,
                           size or DEFAULT_IMAGE_SIZE)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    detector = "Mask R-CNN" if r["task"] == "mask" else "Faster R-CNN"
    rows = [("checkpoint", r["checkpoint"])] if "checkpoint" in r else []
    rows += [("model", f"{detector} + FPN, {r['model']} backbone, {r['classes']} classes"),
            ("params", f"{r['params']:,} (backbone {r['backbone_params']:,})"
                       + (f"; paper {r['paper_params']}" if r["paper_params"] else "")),
            ("GMACs", f"{r['gmacs']:.1f} at {r['image']} (network input {r['network_input']})"
                      + (f"; paper {r['paper_gmacs']}" if r["paper_gmacs"] else ""))]
    rows += [(f"  {part}", f"{g:.1f}") for part, g in r["gmacs_by_part"].items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print(f"GMACs: multiply-adds (10^9) of convolutions and matrix products in the most work one eval forward can do "
          f"(backbone, FPN and RPN head over the padded image, box head over {r['proposals']} proposals"
          + (f", mask head over {r['detections']} detections" if r["task"] == "mask" else "")
          + "); norms, activations and RoIAlign are not counted. params: "
          "nn.Parameters, trainable or not (frozen BatchNorm constants excluded, as in torchvision's figures).")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.detection is not None:
        return cmd_info_detection(args)
    if args.image_size is not None or args.task is not None:
        raise HCGNetError("--image-size and --task describe a detector: add --detection MODEL")
    if args.size is not None and args.size < 1:
        raise HCGNetError(f"--size must be a positive number of pixels, got {args.size}")
    from hcgnet.models import VARIANTS
    from hcgnet.models.registry import parse_model_kwargs
    from hcgnet.models.variants import cifar_stem_note

    from hcgnet.info import model_info

    rows = model_info(args.models or list(VARIANTS), args.num_classes, args.size, parse_model_kwargs(args.model_kwargs),
                      args.stem)
    for r in rows:
        note = cifar_stem_note(r["spec"], r["stem"], int(r["input"].split("x")[1]))
        if note:
            print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("model", "architecture", "input", "classes", "params", "published params", "paper params",
              "GMACs", "paper GMACs")
    table = [header] + [(
        r["model"], r["spec"], r["input"], str(r["classes"]), f"{r['params']:,}",
        f"{r['published_params']:,}" if r["published_params"] else "-", r["paper_params"] or "-",
        f"{r['gmacs']:.3g}", r["paper_gmacs"] or "-",
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    print("GMACs are multiply-adds (10^9) of one forward pass at the input size, batch 1; the paper calls them "
          "FLOPs. 'published': exact parameter count of the published implementation.")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from hcgnet.complexity import count_params
    from hcgnet.inference import convert_checkpoint

    model, meta = convert_checkpoint(args.checkpoint, args.output, args.model, args.force)
    kept = [k for k in ("class_names", "data_config") if k in meta]
    print(f"wrote {args.output}: {meta['model_name']}, {model.num_classes} classes, {count_params(model):,} parameters"
          + (f"; kept its {' and '.join(k.replace('_', ' ') for k in kept)}" if kept else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hcgnet.training import TrainConfig, fit, make_config, resume_config
    overrides = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if hasattr(args, name)}
    output = args.output or TrainConfig.output
    # --resume without --data: the run's own settings (flags given here on top), or "no run there"
    if args.resume and not (args.recipe or args.config) and ((Path(output) / "config.yaml").is_file() or not args.data):
        config = resume_config(output, overrides)
    else:
        config = make_config(args.recipe, args.config, overrides)
    from hcgnet.models.registry import parse_model_kwargs

    from hcgnet.allocator import for_training

    if for_training(bool(parse_model_kwargs(config.model_kwargs).get("memory_efficient"))) == "returned":
        print("memory_efficient: freed blocks of 1 MiB or more go back to the system (glibc mallopt)")
    fit(config)
    return 0


#: Per-class accuracy is listed in the text output up to this many classes (the CSVs of --output hold all).
PER_CLASS_LINES = 20


def _print_per_class(rows: List[dict]) -> None:
    if len(rows) > PER_CLASS_LINES:
        print(f"  per-class accuracy of the {len(rows)} classes: pass --output DIR for per_class.csv")
        return
    width = max(len(r["class"]) for r in rows)
    for r in rows:
        accuracy = "      -" if r["accuracy"] is None else f"{100 * r['accuracy']:6.2f}%"
        print(f"  {r['class']:<{width}}  {accuracy}  ({r['correct']}/{r['images']})")


def _int8_options(args: argparse.Namespace) -> dict:
    """eval's, predict's and export's int8 keywords; an int8 option without --int8 (or without the backend it
    is for) is refused, not ignored."""
    backend, compiled = getattr(args, "int8_backend", None), getattr(args, "int8_compile", True)
    if not args.int8:
        given = [flag for flag, value in (("--calibration", args.calibration), ("--int8-backend", backend),
                                          ("--no-int8-compile", None if compiled else True)) if value is not None]
        if given:
            raise HCGNetError(f"{' and '.join(given)} {'go' if len(given) > 1 else 'goes'} with --int8; add --int8")
        return {}
    if backend == "onnxruntime" and not compiled:
        raise HCGNetError("--no-int8-compile is for --int8-backend pt2e (ONNX Runtime compiles nothing); drop it")
    options = {"int8": backend or "pt2e", "calibration": args.calibration}
    return {**options, "int8_compile": compiled} if hasattr(args, "int8_compile") else options


def cmd_eval(args: argparse.Namespace) -> int:
    from hcgnet.evaluation import EVAL_FILES, per_class, show_top5, write_confusion
    from hcgnet.files import check_output_folder, reported_write
    from hcgnet.inference import evaluate_checkpoint, image_folders_read

    out = None
    if args.output:
        out = check_output_folder(args.output, "the metrics and confusion matrix", EVAL_FILES, force=args.force,
                                  reads=image_folders_read(args.data, [args.checkpoint]))
    m = evaluate_checkpoint(args.checkpoint, args.data, args.data_dir, args.split, args.batch_size, args.workers,
                            args.model, device=args.device, amp=args.amp, channels_last=args.channels_last,
                            skip_bad_images=args.skip_bad_images, compile=args.compile, openvino=args.openvino,
                            limit=args.limit, **_int8_options(args))
    rows = per_class(m["confusion"], m["class_names"])
    # Indented for a few classes; one line for many, where a 1000 x 1000 confusion matrix would be a million lines.
    text = json.dumps({**m, "per_class": rows}, indent=2 if len(rows) <= PER_CLASS_LINES else None)
    scored = first_of(m["count"], m["images_available"], "image")
    if out is not None:
        checkpoint = Path(args.checkpoint)   # its folder too: every run's file is best.safetensors
        with reported_write(out):
            write_confusion(out, m["confusion"], m["class_names"], f"{checkpoint.parent.name}/{checkpoint.name} on "
                            f"{m['data']} ({m['split']}, {scored}): top-1 {100 * m['top1']:.2f}%")
            (out / "metrics.json").write_text(text + "\n")
    if args.json:
        print(text)
    else:
        top5 = f", top-5 {100 * m['top5']:.2f}%" if show_top5(len(rows)) else ""
        int8 = f" in int8 ({m['int8']['backend']}, calibrated on {m['int8']['calibrated_on']})" if "int8" in m else ""
        print(f"{args.checkpoint} on {m['data']} ({m['split']}, {scored}){int8}: top-1 "
              f"{100 * m['top1']:.2f}%{top5}, loss {m['loss']:.4f}")
        if "int8" in m:
            fp32 = m["fp32"]
            print(f"  fp32: top-1 {100 * fp32['top1']:.2f}% (int8 {100 * (m['top1'] - fp32['top1']):+.2f} points), "
                  f"loss {fp32['loss']:.4f}")
        _print_per_class(rows)
    if out is not None:  # on stderr under --json, so stdout stays one JSON document
        print(f"wrote {out}/: {', '.join(EVAL_FILES)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hcgnet.data import DataError
    from hcgnet.files import check_output_file, reported_write
    from hcgnet.inference import predict

    if args.csv:
        check_output_file(args.csv, "--csv", force=args.force)
    results = predict(args.checkpoint, args.images, args.topk, args.model, args.batch_size,
                      compile=args.compile, openvino=args.openvino, device=args.device, amp=args.amp,
                      channels_last=args.channels_last, workers=args.workers, **_int8_options(args))
    if args.csv:
        with reported_write(args.csv):
            _write_predictions_csv(results, args.csv)
        ranks = max((len(r.get("top", ())) for r in results), default=0)  # fewer than --topk with fewer classes
        print(f"wrote {args.csv}: {plural(len(results), 'image')}, top {ranks}",
              file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results, indent=2))
    elif not args.csv:
        for r in results:
            print(r["image"])
            if "error" in r:
                print(f"  skipped: {r['error']}")
            for t in r.get("top", ()):
                print(f"  {100 * t['probability']:6.2f}%  {t['class']}")
    done = sum("top" in r for r in results)
    if done == 0:
        raise DataError(f"none of the {len(results)} inputs could be classified (see the warnings above)")
    return 0


def _write_predictions_csv(results, path: str) -> None:
    """One row per image and rank (an unreadable image: one row with its error)."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "rank", "class", "index", "probability", "error"])
        for r in results:
            if "error" in r:
                writer.writerow([r["image"], "", "", "", "", r["error"]])
            for rank, t in enumerate(r.get("top", ()), 1):
                writer.writerow([r["image"], rank, t["class"], t["index"], f"{t['probability']:.6f}", ""])


def cmd_attention(args: argparse.Namespace) -> int:
    from hcgnet.analysis.attention import attention_study, summary_table

    study = attention_study(args.checkpoint, args.images, args.output, args.model, args.modules,
                            args.max_images, args.device, amp=args.amp, batch_size=args.batch_size, force=args.force)
    print(summary_table(study["summary"]))
    for path in study["files"].values():
        print(f"wrote {path}")
    return 0


def _add_train_options(p: argparse.ArgumentParser) -> None:
    # Defaults are None here so that make_config can tell a flag given from one left out (a recipe or --config
    # file sets the rest); the help shows TrainConfig's default instead.
    from hcgnet.training.config import OPTION_GROUPS, default_text, option_type

    metavars = {"stem": "{cifar,imagenet}", "sched": "{cosine,constant}", "amp": "{none,bf16,fp16}",
                "initial_checkpoint": "FILE", "data": "DATASET", "data_dir": "DIR", "output": "DIR",
                "model": "MODEL|SPEC", "model_kwargs": "JSON", "recipe": "RECIPE", "hflip": "P", "device": "DEVICE"}
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of options (flags given here override it; it overrides --recipe)")
    for title, options in OPTION_GROUPS:
        group = p.add_argument_group(f"{title} parameters")
        for name, text in options:
            flag = "--" + name.replace("_", "-")
            help_text = f"{text} (default: {default_text(name)})".replace("%", "%%")
            if name in ("resume", "overwrite"):
                group.add_argument(flag, action="store_true", default=None, help=help_text)
            elif option_type(name) is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                group.add_argument(flag, type=option_type(name), default=None, help=help_text,
                                   metavar=metavars.get(name) or {int: "N", float: "X"}.get(option_type(name), "NAME"))


def cmd_export(args: argparse.Namespace) -> int:
    from hcgnet.export import check_export_path, export_model, format_of
    from hcgnet.inference import data_config_of, export_metadata, load_model

    int8 = _int8_options(args)
    fmt = args.format or format_of(args.output)
    out = check_export_path(args.output, fmt, args.force)
    if int8:
        from hcgnet.quantize import export_int8

        report = export_int8(args.checkpoint, str(out), fmt, args.model, int8["calibration"], run_data=args.run_data)
        print(f"wrote {out}: int8 {fmt} (QDQ), dynamic batch and input size, calibrated on "
              f"{report['calibrated_on']}; its top-1 agrees with the float model's on "
              f"{100 * report['agreement']:.1f}% of them (largest logit difference {report['max_diff']:.3g})")
        return 0
    model, meta = load_model(args.checkpoint, args.model)
    input_size = data_config_of(model, meta).input_size
    print(f"exporting {args.checkpoint} to {fmt}: tracing, then checking against the eager model at another "
          "input size (a minute or so for a full HCGNet on a CPU)", file=sys.stderr, flush=True)
    export_model(model, str(out), fmt, input_size, metadata=export_metadata(model, meta, args.model, args.run_data))
    print(f"wrote {out}: {fmt}, dynamic batch and input size, checked against the eager model; its class names "
          f"and preprocessing are in the file (README, \"Exporting\")")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hcgnet.bench import benchmark, check_outputs, machine_line, plot, result_line, run_context, write_csv
    from hcgnet.evaluation import device_of
    from hcgnet.files import reported_write, write_json

    def both(value: str):
        return {"on": (True,), "off": (False,), "both": (False, True)}[value]

    # found out now, not after an hour of timing
    check_outputs({"--json": args.json, "--csv": args.csv, "--plot": args.plot}, force=args.force)
    batches = _int_list(args.batch_size, "--batch-size")
    sizes = [(s, s) for s in _int_list(args.size, "--size")] if args.size else None
    if args.against_published:
        if args.plot:
            raise HCGNetError("--plot draws a batch or size sweep; with --against-published use --json or --csv")
        return _bench_against_published(args, both, batches, sizes)
    if args.memory or args.rounds != 3:
        raise HCGNetError("--rounds and --memory go with --against-published PATH")
    notes: List[str] = []
    record = {}

    def note(line: str) -> None:  # after every refusal, before any timing
        notes.append(line)
        print(f"note: {line}", file=sys.stderr, flush=True)

    def starting(total: int) -> None:   # the first row can take minutes (a full model's training steps on 2 cores)
        if not args.json_only:
            print(f"timing {plural(total, 'configuration')} of {args.model}, {args.steps} steps after {args.warmup} "
                  "warm-up each: a row as each finishes (Ctrl-C stops)", file=sys.stderr, flush=True)

    def show(r):
        if not record:  # the machine above the table's first row
            record.update(run_context(args.model, args.steps, args.warmup, device_of(args.device), notes))
            print(machine_line(record))
        print(result_line(r), flush=True)

    results = benchmark(args.model, args.modes.split(","), args.dtypes.split(","), both(args.channels_last),
                        both(args.memory_efficient), both(args.compile), steps=args.steps, warmup=args.warmup,
                        device=args.device, progress=None if args.json_only else show,
                        runtimes=args.runtimes.split(","), batches=batches, sizes=sizes, isolate=args.isolate,
                        note=note, start=starting)
    record = record or run_context(args.model, args.steps, args.warmup, device_of(args.device), notes)
    if args.json:
        # "torch" and "threads" as files before the provenance had them, for their readers
        with reported_write(args.json):
            write_json(args.json, {**record, "torch": record["provenance"]["torch"],
                                   "threads": record["provenance"]["threads"], "results": results})
    if args.csv:
        with reported_write(args.csv):
            write_csv(results, args.csv)
    if args.plot:
        with reported_write(args.plot):
            plot(results, args.plot, title=f"{args.model}, {record['provenance']['threads']} threads")
    written = [path for path in (args.json, args.csv, args.plot) if path]
    if written:  # on stderr: stdout is the table, one line per configuration
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def _bench_against_published(args: argparse.Namespace, both, batches: List[int], sizes) -> int:
    from hcgnet.bench import (against_published, check_request, describe, plan, published_table, published_variant,
                              speed_and_spread, write_csv)
    from hcgnet.evaluation import device_of
    from hcgnet.files import reported_write, write_json
    from hcgnet.published import check_clone

    check_clone(args.against_published)
    published_variant(args.model)
    if len(batches) > 1 or (sizes and len(sizes) > 1):
        raise HCGNetError("--against-published times one --batch-size and one --size at a time")
    if args.isolate:
        raise HCGNetError("--against-published measures memory in fresh processes with --memory; drop --isolate")
    modes, dtypes, runtimes = args.modes.split(","), args.dtypes.split(","), args.runtimes.split(",")
    check_request(device_of(args.device), modes, dtypes, runtimes, batches, args.steps, args.warmup)
    configs, notes = plan(modes, dtypes, both(args.channels_last), both(args.memory_efficient), both(args.compile),
                          runtimes)
    for line in notes:
        print(f"note: {line}", file=sys.stderr, flush=True)

    def show(r):
        print(f"round {r['round'] + 1}  {r['mode']:7s} {describe(r):36s} {speed_and_spread(r)[0]:>14s}", flush=True)

    result = against_published(args.against_published, args.model, configs, batches[0],
                               sizes[0] if sizes else None, args.steps, args.warmup, args.rounds,
                               device=args.device, memory=args.memory, progress=None if args.json_only else show)
    result["not_run"] = notes
    print()
    print("\n".join(published_table(result, args.memory)))
    if args.json:
        with reported_write(args.json):
            write_json(args.json, result)
    if args.csv:
        with reported_write(args.csv):
            write_csv(result["rows"], args.csv)
    written = [path for path in (args.json, args.csv) if path]
    if written:
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def _eps_list(text: str) -> List[float]:
    """``--eps`` of attack and ablate: comma-separated numbers."""
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise HCGNetError(f"--eps takes comma-separated numbers such as 0,0.001,0.002, got {text!r}") from None


def cmd_attack(args: argparse.Namespace) -> int:
    from hcgnet.analysis.attack import RESULTS, attack_checkpoints, check_options, heading, table, write_results
    from hcgnet.analysis.paper import PGD_STEPS
    from hcgnet.analysis.options import amp_dtype
    from hcgnet.evaluation import device_of
    from hcgnet.files import check_output_folder, reported_write
    from hcgnet.inference import batch_progress, image_folders_read, note_on_stderr

    eps = _eps_list(args.eps)
    steps = PGD_STEPS if args.steps is None else args.steps
    check_options(args.attack, eps, steps, args.step_size, args.limit, args.batch_size, args.workers,
                  args.random_start)
    if args.steps is not None and args.attack != "pgd":
        raise HCGNetError(f"--steps is PGD's (--attack pgd); {args.attack} takes one step of eps")
    amp_dtype(args.amp, device_of(args.device))
    out = check_output_folder(args.output, ", ".join(RESULTS), RESULTS, args.force,
                              reads=image_folders_read(args.data, args.checkpoint))
    bar = {}

    def start(total: int) -> None:
        bar["bar"] = batch_progress(total, f"attack {args.attack}", None, note_on_stderr)

    result = attack_checkpoints(
        args.checkpoint, args.data, args.attack, eps, args.model or (), args.data_dir, args.split, steps,
        args.step_size, args.random_start, args.seed, args.batch_size, args.limit, args.device,
        progress=lambda n: bar["bar"].update(n), on_total=start, amp=args.amp, workers=args.workers,
        skip_bad_images=args.skip_bad_images, log=note_on_stderr)
    if hasattr(bar.get("bar"), "close"):
        bar["bar"].close()
    with reported_write(out):
        write_results(result, out)
    print(heading(result))
    print(table(result))
    print(f"wrote {out}/: {', '.join(RESULTS)}")
    return 0


def _int_list(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise HCGNetError(f"{flag} takes comma-separated whole numbers such as 32,64,128, got {text!r}") from None
    if min(values) < 1:
        raise HCGNetError(f"{flag} values must be 1 or more, got {text!r}")
    return values


def cmd_dissect(args: argparse.Namespace) -> int:
    from hcgnet.analysis.broden import Broden, check_broden
    from hcgnet.analysis.options import amp_dtype, checkpoint_file, progress_over
    from hcgnet.evaluation import device_of
    from hcgnet.analysis.dissect import (default_layers, dissect, output_names, strip_name, summary_rows,
                                         thin_threshold_note, write_results)
    from hcgnet.analysis.dissect_plots import plot_unique_detectors, plot_unit_strips
    from hcgnet.files import check_output_folder, reported_write
    from hcgnet.inference import data_config_of, load_model
    from hcgnet.provenance import provenance

    for flag, value, least in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                               ("--size", args.size, 1), ("--top-units", args.top_units, 0), ("--workers", args.workers, 0)):
        if value is not None and value < least:
            raise HCGNetError(f"{flag} must be {least} or more, got {value}")
    if not 0 < args.quantile < 1:
        raise HCGNetError(f"--quantile must be between 0 and 1 (the paper: 0.005), got {args.quantile}")
    if not 0 < args.iou_threshold <= 1:
        raise HCGNetError(f"--iou-threshold must be above 0 and at most 1 (the paper: 0.04), got {args.iou_threshold}")
    device = device_of(args.device)
    amp_dtype(args.amp, device)
    check_broden(args.broden)
    checkpoint_file(args.checkpoint)
    holds = "the tables and pictures of the dissection"
    names = output_names(args.layer or [], bool(args.top_units))
    out = check_output_folder(args.output, holds, names, force=args.force)
    dataset = Broden(args.broden, limit=args.limit)        # read before the (slower) checkpoint
    model, meta = load_model(args.checkpoint, args.model)
    if not args.layer:
        check_output_folder(out, holds, output_names(default_layers(model), bool(args.top_units)), force=args.force)
    config = data_config_of(model, meta)
    size = (args.size, args.size) if args.size else tuple(config.input_size[1:])
    dataset.set_preprocessing(size, config.mean, config.std)
    if len(config.mean) == 1:
        print("note: the Broden images are converted to grayscale for this 1-channel model: its 'color' concepts "
              "are matched by luminance alone", file=sys.stderr)
    results = dissect(model, dataset, args.layer, quantile=args.quantile, iou_threshold=args.iou_threshold,
                      batch_size=args.batch_size, workers=args.workers, device=device, amp=args.amp,
                      progress=lambda batches, desc: progress_over(batches, desc))
    rows = summary_rows(results)
    cats = [k for k in rows[0] if k.startswith("unique_") and k != "unique_detectors"]
    # without --limit, rows left out for want of labels make the set smaller: not "the first N"
    images = first_of(len(dataset), dataset.listed if args.limit is not None else len(dataset), "Broden image")
    print(f"{args.checkpoint}: network dissection (NetDissect-Lite's tally) on {images} at "
          f"{size[0]}x{size[1]} (top {100 * args.quantile:g}% threshold, IoU >= {args.iou_threshold:g})")
    width = max(len("layer"), *(len(r["layer"]) for r in rows))
    print(f"  unique detectors (distinct concepts) per category; detectors: units with IoU >= {args.iou_threshold:g}")
    heads = ["units", "map", "detectors", "unique"] + [c[len("unique_"):] for c in cats]
    print(f"  {'layer':<{width}}  " + "  ".join(f"{h:>9}" for h in heads))
    for r in rows:
        cells = [r["units"], f"{r['height']}x{r['width']}", r["detectors"], r["unique_detectors"]] + [r[c] for c in cats]
        print(f"  {r['layer']:<{width}}  " + "  ".join(f"{str(c):>9}" for c in cells))
    note = thin_threshold_note(results, len(dataset), args.quantile)
    if note:
        print(note, file=sys.stderr)
    with reported_write(out):
        files = write_results(results, out, dict(
            checkpoint=str(args.checkpoint), broden=str(args.broden), images=len(dataset), limit=args.limit,
            images_listed=dataset.listed,
            size=list(size), in_chans=len(config.mean), quantile=args.quantile, iou_threshold=args.iou_threshold,
            amp=args.amp, layers=[r.layer for r in results]), provenance([args.checkpoint], device))
        checkpoint = Path(args.checkpoint)   # the run's folder too, as eval's confusion.png: every run's file is best.*
        plot_unique_detectors(results, out / "unique_detectors.png",
                              title=f"{checkpoint.parent.name}/{checkpoint.name}: unique detectors")
        files.append("unique_detectors.png")
        if args.top_units:
            for r in results:
                name = strip_name(r.layer)
                plot_unit_strips(model, dataset, r, out / name, units=args.top_units, device=device)
                files.append(name)
    print(f"wrote {out}/: {', '.join(files)}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from hcgnet.ablate.grid import grid_summary, list_grids, load_grid

    if args.list_grids:
        import textwrap
        width = max(len(name) for name in list_grids()) + 2
        for name in list_grids():  # whole sentences, wrapped under each other
            print(textwrap.fill(grid_summary(name), 110, initial_indent=name.ljust(width),
                                subsequent_indent=" " * width, break_on_hyphens=False, break_long_words=False))
        return 0
    if not (args.grid and args.output):
        raise HCGNetError("pass --grid GRID.yaml (or a shipped grid: --list-grids) and --output DIR")
    from hcgnet.analysis.paper import ATTACKS, PAPER_EPS, PGD_STEPS

    attacks = []
    if args.attack:
        from hcgnet.ablate.runs import check_attack_options
        from hcgnet.analysis.attack import check_options

        for name in dict.fromkeys(a.strip() for a in args.attack.split(",")):
            if name not in ATTACKS:
                raise HCGNetError(f"--attack: unknown attack {name!r}; use one or more of {', '.join(ATTACKS)}, "
                                  "comma-separated")
            options = {"limit": args.attack_limit} if args.attack_limit is not None else {}
            if name == "pgd":
                options["steps"] = PGD_STEPS if args.attack_steps is None else args.attack_steps
            check_attack_options([{"attack": name, "options": options}])  # in ablate's flags: --steps is the budget
            eps = check_options(name, list(PAPER_EPS) if args.eps is None else _eps_list(args.eps), **options)
            attacks.append({"attack": name, "eps": eps, "options": options})
    # an option of the attacks given without them would be silently ignored: refused, as eval's int8 options are
    given = [flag for flag, value in (("--eps", args.eps), ("--attack-limit", args.attack_limit),
                                      ("--attack-steps", args.attack_steps)) if value is not None]
    if given and not args.attack:
        raise HCGNetError(f"{' and '.join(given)} {'go' if len(given) > 1 else 'goes'} with --attack; add --attack")
    if args.attack_steps is not None and not any(a["attack"] == "pgd" for a in attacks):
        raise HCGNetError("--attack-steps is the iterations of pgd; add pgd to --attack or drop --attack-steps")
    slurm = None
    if args.slurm_parameters and args.executor == "local":
        raise HCGNetError("--slurm-parameters are submitit's, for --executor slurm (or submitit-local); add "
                          "--executor slurm, or drop them to run the grid here")
    if args.slurm_parameters:
        try:
            slurm = json.loads(args.slurm_parameters)
        except json.JSONDecodeError:
            slurm = None
        if not isinstance(slurm, dict):
            raise HCGNetError("--slurm-parameters takes a JSON object such as '{\"slurm_partition\": \"gpu\", "
                              f"\"timeout_min\": 600}}', got {args.slurm_parameters!r}")
    from hcgnet.ablate.study import ablate

    result = ablate(load_grid(args.grid), args.output, args.seeds, args.epochs, args.steps,
                    {"data": args.data, "data_dir": args.data_dir, "workers": args.workers}, args.jobs, args.executor,
                    args.force, attacks, slurm)
    print(Path(result["files"][0]).read_text())
    print("wrote " + ", ".join(result["files"]))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from hcgnet.data import download_dataset

    print(f"{args.dataset}: checking{' ' + args.data_dir if args.data_dir else ''}, downloading what is missing "
          "(torchvision)", file=sys.stderr, flush=True)
    folder, train, test = download_dataset(args.dataset, args.data_dir)
    print(f"{args.dataset} is in {folder}: {train:,} training and {test:,} test images")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from hcgnet.training.config import list_recipes, load_recipe, recipe_summary

    rows = [("recipe", "model", "data", "epochs", "batch", "lr", "what it is")]
    for name in list_recipes():
        r = load_recipe(name)
        rows.append((name, r.get("model", "--model"), r.get("data", "--data"), str(r.get("epochs", "-")),
                     str(r.get("batch_size", "-")), f"{r['lr']:g}" if "lr" in r else "-", recipe_summary(name)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print("batch: the global batch, divided over torchrun's processes. A flag given to `hcgnet train` overrides "
          "the recipe's value; '--model'/'--data': the recipe leaves it to you (finetune: --model defaults to the "
          "network the --initial-checkpoint names).")
    return 0


# ------------------------------------------------------------------------------------------------ detect


def cmd_detect_train(args: argparse.Namespace) -> int:
    from hcgnet.detection.config import DetectConfig, resume_detect_config
    from hcgnet.detection.trainer import train

    options = None
    if args.detector_options is not None:
        try:
            options = json.loads(args.detector_options)
        except json.JSONDecodeError:
            raise HCGNetError("--detector-options takes a JSON object such as '{\"box_batch_size_per_image\": 128}', "
                              f"got {args.detector_options!r}") from None
    given = {name: getattr(args, name) for name in DetectConfig.__dataclass_fields__ if hasattr(args, name)}
    given["detector_options"] = options
    output = args.output or DetectConfig.output
    if args.resume and not args.images:  # the run's own settings, flags given here on top; or "no run there"
        config = resume_detect_config(output, given)
    else:
        config = DetectConfig.preset(args.preset, **{k: v for k, v in given.items() if v is not None})
    train(config)
    return 0


def cmd_detect_eval(args: argparse.Namespace) -> int:
    from hcgnet.detection.evaluate import REPORTS, evaluate_coco, summary, table, write_reports
    from hcgnet.files import check_output_folder, reported_write
    from hcgnet.inference import note_on_stderr

    out = Path(args.output) if args.output else None
    if out is not None:
        check_output_folder(out, "the metrics and detections", results=REPORTS, force=args.force)
    m = evaluate_coco(args.checkpoint, args.images, args.annotations, args.batch_size, args.workers, args.device,
                      args.amp, log=note_on_stderr)
    if args.json:  # as in eval --json: JSON alone on stdout
        print(json.dumps(summary(m), indent=2))
    else:
        print(f"{args.checkpoint} on {args.annotations} ({plural(m['images'], 'image')}): COCO AP (%)")
        print(table(m))
    if out is not None:
        with reported_write(out):
            files = write_reports(m, out)
        print(f"wrote {out}/: {', '.join(f.name for f in files)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_detect_predict(args: argparse.Namespace) -> int:
    from hcgnet.data import DataError
    from hcgnet.detection.draw import predict
    from hcgnet.files import check_output_file, reported_write
    from hcgnet.inference import note_on_stderr

    if args.csv:  # before any work, as predict --csv
        check_output_file(args.csv, "--csv", force=args.force)
    results = predict(args.checkpoint, args.images, args.output, args.score_threshold, args.device,
                      log=note_on_stderr, force=args.force)
    drawn = [r for r in results if "png" in r]
    if args.csv:
        with reported_write(args.csv):
            _write_detections_csv(results, args.csv)
        rows = sum(len(r["detections"]) for r in drawn)
        print(f"wrote {args.csv}: {plural(len(results), 'image')}, {plural(rows, 'detection')}",
              file=sys.stderr if args.json else sys.stdout)
    if args.json:  # as predict --json: JSON alone on stdout
        print(json.dumps(results, indent=2))
    else:
        for r in drawn:
            shown = r["detections"][:10]  # the best ten on the terminal; the picture, --json and --csv have them all
            found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in shown) or "nothing"
            more = len(r["detections"]) - len(shown)
            print(f"{r['png']}: {found}{f' and {more} more' if more > 0 else ''}")
    if not drawn:
        what = "the input could not" if len(results) == 1 else f"none of the {len(results)} inputs could"
        raise DataError(f"{what} be read (see the warnings above)")
    return 0


def _write_detections_csv(results, path: str) -> None:
    """One row per detection drawn, box as [x, y, w, h] in the image's pixels; an image with none: one row with
    its PNG and empty fields; an unreadable image: one row with its error."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "png", "class", "category_id", "score", "x", "y", "w", "h", "error"])
        for r in results:
            if "error" in r:
                writer.writerow([r["image"], "", "", "", "", "", "", "", "", r["error"]])
                continue
            for d in r["detections"]:
                writer.writerow([r["image"], r["png"], d["class"], d["category_id"], f"{d['score']:.6f}",
                                 *(f"{v:.2f}" for v in d["bbox"]), ""])
            if not r["detections"]:
                writer.writerow([r["image"], r["png"], "", "", "", "", "", "", "", ""])


def _add_detect_parser(sub) -> None:
    detect = sub.add_parser("detect", help="Mask R-CNN / Faster R-CNN with an HCGNet backbone on COCO-format data")
    detect.defer(_add_detect_tasks)


def _add_detect_tasks(detect: argparse.ArgumentParser) -> None:
    from hcgnet.detection.config import DetectConfig as D

    tasks = detect.add_subparsers(dest="detect_command", required=True)

    tr = tasks.add_parser("train", help="train a detector (the paper's 1x schedule; other settings torchvision's or, "
                                        "with --preset published, the published config's; torchrun for GPUs)")
    tr.add_argument("--images", default=None, metavar="DIR", help="folder of the training images")
    tr.add_argument("--annotations", default=None, metavar="FILE", help="their COCO instances JSON")
    tr.add_argument("--val-images", default=None, metavar="DIR", help="validation images, scored every epoch")
    tr.add_argument("--val-annotations", default=None, metavar="FILE", help="their COCO instances JSON")
    tr.add_argument("--model", default=None, metavar="MODEL|SPEC", help=f"backbone (default {D.model})")
    tr.add_argument("--task", choices=("mask", "box"), default=None,
                    help="mask: Mask R-CNN, box: Faster R-CNN (default mask)")
    tr.add_argument("--weights-backbone", default=None, metavar="FILE", help="ImageNet weights of the backbone")
    tr.add_argument("--preset", choices=("torchvision", "published"), default="torchvision",
                    help="torchvision (default): BN scale and shift frozen, warm-up 1000 steps from 0.001, no "
                         "clipping; published: the published mmdetection config's (BN scale and shift trained, "
                         "warm-up 500 steps from 1/3, gradients clipped at 35); the flags below win")
    tr.add_argument("--trainable-stages", type=int, default=None, metavar="N",
                    help="with --weights-backbone: backbone stages trained, counted from the top (default 3); "
                         "without, every layer trains")
    tr.add_argument("--bn-affine", choices=("frozen", "trainable"), default=None,
                    help="with --weights-backbone: BatchNorm scale and shift frozen (default) or trained outside "
                         "the frozen stages; the statistics stay frozen either way")
    tr.add_argument("--image-size", type=int, default=None, metavar="N",
                    help=f"shorter image side the detector resizes to (default {D.image_size})")
    tr.add_argument("--max-size", type=int, default=None, metavar="N", help=f"longer side at most (default {D.max_size})")
    tr.add_argument("--epochs", type=int, default=None, metavar="N",
                    help=f"default {D.epochs}; the lr drops at 8/12 and 11/12 of them")
    tr.add_argument("--batch-size", type=int, default=None, metavar="N",
                    help=f"global batch, divided over torchrun's processes (default {D.batch_size})")
    tr.add_argument("--lr", type=float, default=None, metavar="X",
                    help=f"learning rate for a global batch of {D.lr_base_batch}, scaled linearly (default {D.lr})")
    tr.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                    help=f"linear warm-up steps (default {D.warmup_steps})")
    tr.add_argument("--warmup-factor", type=float, default=None, metavar="X",
                    help=f"the warm-up starts at this fraction of the rate (default {D.warmup_factor})")
    tr.add_argument("--clip-grad", type=float, default=None, metavar="NORM",
                    help="clip the gradients' global L2 norm to NORM (default: never; published: 35)")
    tr.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="mixed precision (fp16: GPU only)")
    tr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    tr.add_argument("--workers", type=int, default=None, help=f"data loading processes (default {D.workers})")
    tr.add_argument("--seed", type=int, default=None,
                    help=f"seed of the new layers' weights, the data order and the flips (default {D.seed})")
    tr.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="also save last.pt every N steps (default: at epoch ends)")
    tr.add_argument("--max-steps-per-epoch", type=int, default=None, metavar="N", help="cut epochs short (smoke runs)")
    tr.add_argument("--log-every", type=int, default=None, metavar="N",
                    help=f"a steps.csv row every N steps of an epoch and at each epoch's end (default {D.log_every})")
    tr.add_argument("--detector-options", default=None, metavar="JSON",
                    help="more keyword arguments of torchvision's MaskRCNN/FasterRCNN, e.g. "
                         "'{\"box_detections_per_img\": 50}'")
    tr.add_argument("--output", default=None, metavar="DIR", help=f"run folder (default {D.output})")
    tr.add_argument("--resume", action="store_true", default=None, help="continue the run in --output")
    tr.add_argument("--overwrite", action="store_true", default=None,
                    help="replace the run in --output (the old one stays until the new one finishes)")
    tr.set_defaults(func=cmd_detect_train)

    ev = tasks.add_parser("eval", help="COCO box and mask AP of a trained detector (pycocotools)")
    ev.add_argument("--checkpoint", required=True, help="final.safetensors or last.pt of hcgnet detect train")
    ev.add_argument("--images", required=True, metavar="DIR", help="folder of the images the annotations name")
    ev.add_argument("--annotations", required=True, metavar="FILE", help="COCO instances JSON")
    ev.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    add_hardware_options(ev, "autocast dtype")
    ev.add_argument("--json", action="store_true", help="print the AP figures as JSON instead of a table")
    ev.add_argument("--output", default=None, metavar="DIR",
                    help="write metrics.json, metrics.csv and the detections in COCO's results format")
    ev.add_argument("--force", action="store_true", help="replace those files in --output if they exist")
    ev.set_defaults(func=cmd_detect_eval)

    pr = tasks.add_parser("predict", help="draw a detector's boxes, classes and masks on images (PNGs)")
    pr.add_argument("--checkpoint", required=True, help="final.safetensors or last.pt of hcgnet detect train")
    pr.add_argument("images", nargs="+", metavar="IMAGE|FOLDER|GLOB",
                    help="image files, folders of them or quoted globs")
    pr.add_argument("--output", required=True, metavar="DIR", help="folder for one PNG per image")
    pr.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring this or more (0.5)")
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    pr.add_argument("--json", action="store_true",
                    help="print JSON instead of text: per image its PNG and each detection's class, COCO category "
                         "id, score and bbox [x, y, w, h] in the image's pixels")
    pr.add_argument("--csv", default=None, metavar="FILE",
                    help="write one row per detection to FILE (image, png, class, category_id, score, x, y, w, h)")
    pr.add_argument("--force", action="store_true", help="replace PNGs of the same names in --output and the --csv FILE")
    pr.set_defaults(func=cmd_detect_predict)


INFERENCE_AMP_HELP = "autocast dtype: bf16 pays on CPUs with AVX512-BF16/AMX and on GPUs; fp16 on GPUs (default none: fp32)"


def add_hardware_options(p: argparse.ArgumentParser, amp_help: str, workers: Optional[int] = 2) -> None:
    """``--workers`` (when the command loads data through a DataLoader), ``--device`` and ``--amp``, the options
    every command that runs a model shares."""
    if workers is not None:
        p.add_argument("--workers", type=int, default=workers, help=f"data loading processes (default {workers})")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help=amp_help)


def one_line_usage_errors(parser: argparse.ArgumentParser, hint: Optional[Callable[[str], str]] = None) -> None:
    """Make ``parser`` report a usage mistake (a missing or malformed argument) as every other mistake is
    reported: one line ``hcgnet: error: ...`` pointing at ``--help``, exit code 2. ``hint(message)`` may add
    a sentence for a mistake that is easy to make."""

    def error(message: str):
        extra = hint(message) if hint else ""
        parser.exit(2, f"hcgnet: error: {message}{'; ' + extra if extra else ''} ({parser.prog} --help "
                       "shows every option)\n")

    parser.error = error  # argparse calls self.error for every usage mistake


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with :meth:`defer`, for options whose defaults or choices come from modules that
    import torch. Here they are added at once (``build_parser()``: every option there to inspect)."""

    def defer(self, add_options: Callable[[argparse.ArgumentParser], None]) -> None:
        add_options(self)


class _LazyParser(_Parser):
    """:class:`_Parser` adding deferred options on first use (parsing or help), so that parsing one command
    does not import what another one needs (``main``: ``hcgnet --version`` without torch). Subcommand parsers
    are of their parent's class."""

    _pending: Optional[Callable[[argparse.ArgumentParser], None]] = None

    def defer(self, add_options: Callable[[argparse.ArgumentParser], None]) -> None:
        self._pending = add_options

    def _add_pending(self) -> None:
        if self._pending is not None:
            add_options, self._pending = self._pending, None
            add_options(self)
            _one_line_everywhere(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_pending()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_pending()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_pending()
        return super().format_help()


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser ``args`` went through, e.g. ``hcgnet detect eval``'s."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def _one_line_everywhere(parser: argparse.ArgumentParser) -> None:
    """:func:`one_line_usage_errors` for ``parser`` and every (sub)command below it not already given a hint."""
    if "error" not in vars(parser):
        one_line_usage_errors(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _one_line_everywhere(child)


def add_checkpoint(p: argparse.ArgumentParser, also: str = "") -> None:
    """``--checkpoint`` and ``--model``, for the commands that run a trained model (``also``: other files the
    command takes, said in the help)."""
    p.add_argument("--checkpoint", required=True,
                   help=".safetensors or .pt written by hcgnet train or convert" + also)
    p.add_argument("--model", default=None, help="model name, for checkpoints that do not say (published ones)")


def add_compile(p: argparse.ArgumentParser, batch_flag: str) -> None:
    """``--compile`` and ``--openvino``: eval's and predict's faster float inference."""
    p.add_argument("--compile", action="store_true",
                   help=f"compile the model with torch.compile, weights frozen, for {batch_flag} images at a time: "
                        "faster batches after a first one that waits minutes for the compilation (BENCHMARKS.md)")
    p.add_argument("--openvino", choices=("fp32", "bf16"), default=None, metavar="PRECISION",
                   help="run the model exported to ONNX in OpenVINO's CPU runtime at fp32 or bf16 (the fastest "
                        "CPU inference measured, BENCHMARKS.md; needs the openvino extra); each new batch shape "
                        "compiles once, in seconds")


def add_int8(p: argparse.ArgumentParser) -> None:
    """``--int8`` and its settings (eval and predict)."""
    p.add_argument("--int8", action="store_true",
                   help="run the model quantized to int8 on the CPU, calibrated on --calibration training "
                        "images of the checkpoint's own data (eval also scores the float model, and says both)")
    p.add_argument("--int8-backend", choices=("pt2e", "onnxruntime"), default=None,
                   help="pt2e: torchao's PT2E flow, compiled by Inductor into x86 int8 kernels (default); "
                        "onnxruntime: ONNX Runtime static QDQ quantization, as export --int8 writes")
    p.add_argument("--calibration", type=int, default=None, metavar="N",
                   help="with --int8: calibration images, a seeded sample of the training split (default 512)")
    p.add_argument("--no-int8-compile", dest="int8_compile", action="store_false",
                   help="with --int8 (pt2e): run the quantized program uncompiled: the same int8 rounding in "
                        "float arithmetic, slower per batch, without Inductor's compilation (minutes for a "
                        "full HCGNet)")


def _add_model_commands(sub) -> None:
    """info, convert and train."""
    info = sub.add_parser("info", help="parameters and multiply-adds of models, beside the paper's figures")
    info.add_argument("models", nargs="*", metavar="MODEL|SPEC|FILE",
                      help="variant names, specs such as 'HCGNet-(8,8,8)-(k=12,24,36)', or checkpoint files (the "
                           "network each holds, at the input size it was trained for) (default: all variants)")
    info.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the variant's)")
    info.add_argument("--size", type=int, default=None, metavar="N",
                      help="square input side for the GMACs column, e.g. 224 (default: each variant's own)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--model-kwargs", default=None, metavar="JSON",
                      help="design switches as in train, e.g. '{\"forget_gate\": false}' (README: Design switches)")
    info.add_argument("--stem", choices=("cifar", "imagenet"), default=None,
                      help="the stem, as in train (default: each network's own: cifar for 3 blocks, imagenet for 4)")
    info.add_argument("--detection", default=None, metavar="MODEL|SPEC|FILE",
                      help="a detector instead: Mask R-CNN + FPN with this backbone (hcgnet_b, a spec, or resnet50), "
                           "beside the paper's Table 4; --num-classes defaults to 91 (COCO); or a file of hcgnet "
                           "detect train (final.safetensors, last.pt), counted at the size it was trained for")
    info.add_argument("--task", choices=("mask", "box"), default=None,
                      help="with --detection: mask (Mask R-CNN, default) or box (Faster R-CNN)")
    info.add_argument("--image-size", default=None, metavar="HxW",
                      help="with --detection: image size for the GMACs (default 800x1333, the paper's)")
    info.set_defaults(func=cmd_info)

    convert = sub.add_parser("convert", help="turn a published checkpoint or a training .pt into a .safetensors file")
    convert.add_argument("checkpoint", help="published checkpoint (e.g. HCGNet_B_best.pth.tar) or hcgnet's own "
                                            "(best.pt, .safetensors): its class names and preprocessing are kept")
    convert.add_argument("output", help="the .safetensors file to write")
    convert.add_argument("--model", default=None,
                         help="variant name or spec the checkpoint belongs to (needed for published checkpoints)")
    convert.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    convert.set_defaults(func=cmd_convert)

    train = sub.add_parser("train", help="train a model (also under torchrun for several processes)")
    train.defer(_add_train_options)
    train.set_defaults(func=cmd_train)


def _add_inference_commands(sub) -> None:
    """eval, predict, export and bench."""
    ev = sub.add_parser("eval", help="top-1, top-5 and loss of a checkpoint on a dataset")
    add_checkpoint(ev, also=", or an ONNX file written by hcgnet export (run by ONNX Runtime, or OpenVINO with "
                            "--openvino), scored on the data and split its run recorded")
    ev.add_argument("--data", default=None, help="cifar10, cifar100, fashion-mnist or imagefolder:PATH (default: "
                                                 "the data the checkpoint was trained on, as it records it)")
    ev.add_argument("--data-dir", default=None,
                    help="where CIFAR / Fashion-MNIST files are (default: where the checkpoint's run found them, "
                         "if that is here, else $HCGNET_DATA or ~/.cache/hcgnet/data)")
    ev.add_argument("--split", choices=("test", "val", "all"), default=None,
                    help="test or val: the training run's held-out images (of the data it was trained on); all: "
                         "every image of an imagefolder (default: all for a folder the checkpoint was not trained "
                         "on, else test)")
    ev.add_argument("--limit", type=int, default=None, metavar="N",
                    help="score the first N images of the split only (the images attack --limit N attacks)")
    ev.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    add_hardware_options(ev, INFERENCE_AMP_HELP)
    ev.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions)")
    add_compile(ev, "--batch-size")
    ev.add_argument("--skip-bad-images", action="store_true", default=None,
                    help="leave out unreadable images (default: as the training run did)")
    ev.add_argument("--output", default=None, metavar="DIR",
                    help="also write metrics.json, per_class.csv, confusion.csv and confusion.png here")
    ev.add_argument("--force", action="store_true", help="replace the files of an earlier eval in --output")
    ev.add_argument("--json", action="store_true", help="print JSON (with the confusion matrix) instead of text")
    add_int8(ev)
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="top-5 classes of image files, folders or glob patterns")
    add_checkpoint(pr, also=", or an ONNX file written by hcgnet export (run by ONNX Runtime, or OpenVINO with "
                            "--openvino)")
    pr.add_argument("images", nargs="+", metavar="IMAGE|FOLDER|GLOB",
                    help="image files, folders (searched recursively) or quoted patterns such as 'shots/**/*.jpg'")
    pr.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    pr.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    pr.add_argument("--json", action="store_true", help="print JSON instead of text")
    pr.add_argument("--csv", default=None, metavar="FILE", help="write one row per image and rank to FILE")
    pr.add_argument("--force", action="store_true", help="replace the --csv FILE if it exists")
    pr.add_argument("--workers", type=int, default=2,
                    help="threads that read and decode the images, a batch ahead of the model (default 2; 0: one "
                         "batch after the other in the main thread)")
    add_hardware_options(pr, INFERENCE_AMP_HELP, workers=None)
    pr.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions)")
    add_compile(pr, "--batch-size")
    add_int8(pr)
    pr.set_defaults(func=cmd_predict)
    one_line_usage_errors(pr, lambda message: "give the image files, folders or quoted globs themselves, without "
                          "--images" if "--images" in message else "")

    ex = sub.add_parser("export", help="ONNX, TorchScript or torch.export (.pt2) file of a checkpoint")
    add_checkpoint(ex)
    ex.add_argument("--format", default=None, choices=("onnx", "torchscript", "pt2"),
                    help="ONNX (ONNX Runtime, OpenVINO), TorchScript or torch.export's .pt2 (default: what "
                         "--output's name says: .onnx, .pt, .pt2)")
    ex.add_argument("--output", required=True, metavar="OUTPUT", help="the file to write (.onnx, .pt or .pt2)")
    ex.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    ex.add_argument("--no-run-data", dest="run_data", action="store_false",
                    help="leave the run's data and split settings out of the file (they name local folders); "
                         "eval then needs --data")
    ex.add_argument("--int8", action="store_true",
                    help="an int8 QDQ model (ONNX Runtime static quantization; --format onnx), calibrated on "
                         "--calibration training images of the checkpoint's own data")
    ex.add_argument("--calibration", type=int, default=None, metavar="N",
                    help="with --int8: calibration images from the training split (default 512)")
    ex.set_defaults(func=cmd_export)

    be = sub.add_parser("bench", help="training/inference speed and peak memory of configurations, in one process")
    be.add_argument("--model", default="hcgnet_a1", help="a registered name, an HCGNet-(...)-(k=...) spec, or a "
                    "checkpoint file: its network with its weights, input channels, classes and training size "
                    "(default hcgnet_a1)")
    be.add_argument("--modes", default="train,infer",
                    help="comma-separated: train, infer, latency (batch 1) (default train,infer)")
    be.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16, fp16 (GPU) (default fp32)")
    for flag, what in (("channels-last", "NHWC memory format"),
                       ("memory-efficient", "recomputation in backward (memory_efficient=True; training only)"),
                       ("compile", "torch.compile (inference: weights frozen, as hcgnet eval --compile)")):
        be.add_argument(f"--{flag}", choices=("off", "on", "both"), default="off",
                        help=f"{what}: off, on, or both side by side (default off)")
    be.add_argument("--runtimes", default="eager",
                    help="comma-separated: eager, torchscript, onnx, pt2, int8 (torchao PT2E, compiled; on the CPU, needs "
                         "the int8 extra), openvino (the ONNX export in OpenVINO, at each of --dtypes fp32/bf16; on "
                         "the CPU, needs the openvino extra); runtimes other than eager time inference only "
                         "(default eager)")
    be.add_argument("--batch-size", default="64",
                    help="one batch size or a comma-separated sweep, e.g. 16,32,64 (default 64)")
    be.add_argument("--size", default=None, help="square input side or a sweep, e.g. 32,64 (default: the model's)")
    be.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    be.add_argument("--warmup", type=int, default=3,
                    help="untimed steps before them: compilation, allocator, caches (default 3)")
    be.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    be.add_argument("--isolate", action="store_true",
                    help="each configuration in a fresh process, under the allocator setting hcgnet train gives "
                         "it: exact peak memory for every one")
    be.add_argument("--json", default=None,
                    help="also write the results here, with the machine, the date and the provenance")
    be.add_argument("--csv", default=None, help="also write the results as CSV (a file other than --json's)")
    be.add_argument("--plot", default=None, help="step time and peak memory against pixels per step, as .png (or "
                    ".svg, .pdf: a format matplotlib writes)")
    be.add_argument("--force", action="store_true", help="replace the --json, --csv and --plot files if they exist")
    pub = be.add_argument_group("side by side with the published implementation")
    pub.add_argument("--against-published", default=None, metavar="PATH",
                     help="a clone of github.com/winycg/HCGNet: time its own model class (eager fp32, the same "
                          "weights, logits checked equal first) beside each configuration, in interleaved rounds")
    pub.add_argument("--rounds", type=int, default=3, help="with --against-published: rounds (default 3)")
    pub.add_argument("--memory", action="store_true",
                     help="with --against-published: each training configuration again in a fresh process per "
                          "round for its peak resident memory (the largest over the rounds)")
    be.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    be.set_defaults(func=cmd_bench)


def _add_study_commands(sub) -> None:
    """The studies (attack, attention, dissect, ablate) and detection."""
    from hcgnet.analysis.paper import PAPER_ATTACK, PAPER_EPS, PGD_STEPS

    at = sub.add_parser("attack", help="accuracy of checkpoints under attack at several eps (by default the paper's "
                        "Figure 5 measure: foolbox 2's FGSM)")
    at.add_argument("--checkpoint", action="append", required=True, metavar="FILE",
                    help=".safetensors or .pt of hcgnet train/convert; repeat to compare models (e.g. a timm baseline)")
    at.add_argument("--model", action="append", default=None, metavar="NAME",
                    help="model name for a checkpoint that does not say (published ones); one per --checkpoint, in order")
    at.add_argument("--data", default=None, help="cifar10, cifar100, fashion-mnist or imagefolder:PATH (default: "
                                                 "the data the checkpoints were trained on, if they all record the same)")
    at.add_argument("--data-dir", default=None,
                    help="where CIFAR / Fashion-MNIST files are (default: where the checkpoint's run found them, "
                         "if that is here, else $HCGNET_DATA or ~/.cache/hcgnet/data)")
    at.add_argument("--split", choices=("test", "val", "all"), default=None,
                    help="as hcgnet eval (default: all for a folder the checkpoint was not trained on, else test)")
    at.add_argument("--attack", default=PAPER_ATTACK,
                    help="fgsm-any (default): the paper's measure, foolbox 2's FGSM as the published script called it "
                         "(the step of eps, then 20 smaller ones; wrong if any fools the model); fgsm: exactly one "
                         "signed-gradient step of eps; pgd: L-inf PGD")
    at.add_argument("--eps", default=",".join(f"{e:g}" for e in PAPER_EPS),
                    help="comma-separated eps in pixel units, images in [0, 1] (default the paper's: %(default)s)")
    at.add_argument("--steps", type=int, default=None, help=f"PGD steps (default {PGD_STEPS})")
    at.add_argument("--step-size", type=float, default=None, help="PGD step size (default 2.5 * eps / steps)")
    at.add_argument("--random-start", action="store_true", help="PGD from a uniform random point of the eps-ball")
    at.add_argument("--seed", type=int, default=0, help="seed of PGD's random start (default 0)")
    at.add_argument("--limit", type=int, default=None, metavar="N", help="attack the first N images only")
    at.add_argument("--skip-bad-images", action="store_true", default=None,
                    help="leave out unreadable images of an image folder (default: as the training run did)")
    at.add_argument("--batch-size", type=int, default=64, help="images per attack batch (default 64)")
    add_hardware_options(at, "autocast dtype of the model's forward and backward passes; images and their "
                         "gradients stay float32 (bf16: GPUs and CPUs with AVX512-BF16/AMX; fp16: GPUs; default none)")
    at.add_argument("--output", required=True, metavar="DIR",
                    help="folder for robustness.csv, robustness.json and robustness.png")
    at.add_argument("--force", action="store_true", help="replace the results of an earlier run in --output")
    at.set_defaults(func=cmd_attack)

    at = sub.add_parser("attention", help="where the gates look: their attention maps over images, PNG grid")
    add_checkpoint(at)
    at.add_argument("images", nargs="+", metavar="IMAGE|FOLDER|GLOB",
                    help="image files, folders (searched recursively) or quoted patterns such as 'shots/*.png'")
    at.add_argument("--output", required=True, metavar="DIR",
                    help="folder for attention.png, weights.png, maps.npz and summary.json (created if missing)")
    at.add_argument("--force", action="store_true", help="replace the results of an earlier run in --output")
    at.add_argument("--modules", nargs="+", default=None, metavar="NAME",
                    help="SMG modules, e.g. stages.1.block.layers.0 or stages.1.transition "
                         "(default: the last SMG module of each hybrid block)")
    at.add_argument("--max-images", type=int, default=16,
                    help="rows of the grid: at most N images; when there are more, taken in turn from each folder, "
                         "so a folder of class folders shows every class (default 16)")
    at.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    add_hardware_options(at, "autocast dtype of the forward pass (bf16: GPUs and CPUs with AVX512-BF16/AMX; "
                         "fp16: GPUs; default none)", workers=None)  # it reads its few images itself
    at.set_defaults(func=cmd_attention)
    one_line_usage_errors(at, lambda message: "give image files, folders or quoted globs before --modules, which "
                          "takes every name after it" if "IMAGE" in message else "")

    ds = sub.add_parser("dissect", help="network dissection (Bau et al. 2017): concept detectors per layer on Broden")
    add_checkpoint(ds)
    ds.add_argument("--broden", required=True, metavar="DIR", help="a Broden directory (broden1_224; not shipped)")
    ds.add_argument("--layer", action="append", default=None, metavar="NAME",
                    help="module whose output map to dissect (repeat for several; default: every hybrid block's "
                         "output, the last after the final BN-ReLU)")
    ds.add_argument("--limit", type=int, default=None, help="dissect on the first N images only")
    ds.add_argument("--size", type=int, default=None, help="image side fed to the model (default: the model's input size)")
    ds.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_hardware_options(ds, "autocast dtype of the forward passes (bf16: GPUs and CPUs with AVX512-BF16/AMX; "
                         "fp16: GPUs; default none)")
    ds.add_argument("--quantile", type=float, default=0.005, help="top fraction of activations a unit fires on (default 0.005, the paper's)")
    ds.add_argument("--iou-threshold", type=float, default=0.04, help="IoU that makes a unit a detector (default 0.04, the paper's)")
    ds.add_argument("--top-units", type=int, default=8, help="units per layer in the image strips (0: no strips; default 8)")
    ds.add_argument("--output", required=True, metavar="DIR",
                    help="writes <layer>.csv, summary.csv, summary.json, unique_detectors.png, units_<layer>.png")
    ds.add_argument("--force", action="store_true", help="replace the files of an earlier dissection in --output")
    ds.set_defaults(func=cmd_dissect)

    _add_detect_parser(sub)

    ab = sub.add_parser("ablate", help="a grid of variants x paired seeds, each a training run; means, t-intervals "
                        "and paired differences to the base")
    ab.add_argument("--grid", default=None, help="GRID.yaml (base: train options; variants: name: overrides) or a "
                                                 "shipped grid's name")
    ab.add_argument("--list-grids", action="store_true", help="list the shipped grids and exit")
    ab.add_argument("--data", default=None,
                    help="over the grid's base: cifar10, cifar100, fashion-mnist or imagefolder:PATH")
    ab.add_argument("--data-dir", default=None, help="where CIFAR / Fashion-MNIST files are")
    ab.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every variant, paired (default 5)")
    budget = ab.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the base's)")
    budget.add_argument("--steps", type=int, default=None, help="optimiser steps of every run (one epoch cut short)")
    ab.add_argument("--output", default=None, metavar="DIR",
                    help="runs/<variant>/seed<k>/, summary.md, summary.csv, runs.csv, ablation.png")
    ab.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (default 1)")
    ab.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                    help="local (default); slurm: one submitit job per run; submitit-local: the same jobs as local "
                         "processes")
    ab.add_argument("--slurm-parameters", default=None, metavar="JSON",
                    help="submitit's update_parameters, e.g. '{\"slurm_partition\": \"gpu\", \"timeout_min\": 600, "
                         "\"gpus_per_node\": 1}'")
    ab.add_argument("--workers", type=int, default=None, help="data-loading processes per run (default: the base's)")
    from hcgnet.analysis.paper import ATTACKS, PAPER_EPS, PGD_STEPS
    ab.add_argument("--attack", default=None, metavar="NAME[,NAME]",
                    help=f"also attack every finished run's test set with each of these ({', '.join(ATTACKS)}); "
                         "the summary gains accuracy under each attack at each eps")
    ab.add_argument("--eps", default=None,
                    help="with --attack: comma-separated eps in pixel units (default the paper's: "
                         f"{','.join(f'{e:g}' for e in PAPER_EPS)})")
    ab.add_argument("--attack-limit", type=int, default=None, metavar="N",
                    help="with --attack: the first N test images only (default: all)")
    ab.add_argument("--attack-steps", type=int, default=None, metavar="K",
                    help=f"with --attack pgd: its iterations (default {PGD_STEPS})")
    ab.add_argument("--force", action="store_true",
                    help="replace runs whose config changed, and summary files in a folder without runs/")
    ab.set_defaults(func=cmd_ablate)


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``lazy``: the options of train and detect added only when used (:class:`_LazyParser`)."""
    parser = (_LazyParser if lazy else _Parser)(prog="hcgnet", description="HCGNet: model information, checkpoint conversion, training, evaluation, prediction, export and the paper's studies (attack, dissect, attention).")
    parser.add_argument("--version", action="version", version=f"hcgnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_model_commands(sub)
    _add_inference_commands(sub)
    _add_study_commands(sub)
    rec = sub.add_parser("recipes", help="list the packaged training recipes")
    rec.set_defaults(func=cmd_recipes)
    dl = sub.add_parser("download", help="let torchvision download CIFAR-10, CIFAR-100 or Fashion-MNIST (nothing "
                                         "else downloads unless asked)")
    dl.add_argument("dataset", choices=("cifar10", "cifar100", "fashion-mnist"), help="the dataset")
    dl.add_argument("--data-dir", default=None, metavar="DIR",
                    help="where to put it, the --data-dir of train, eval and attack (default: $HCGNET_DATA, else "
                         "~/.cache/hcgnet/data)")
    dl.set_defaults(func=cmd_download)
    _one_line_everywhere(parser)
    return parser


#: Options that name files or folders: a leading ``~`` is the home folder there too. The shell expands it in
#: ``--output ~/x`` but not in ``--output=~/x``, which would otherwise make a folder named ``~``.
PATH_OPTIONS = ("output", "csv", "json", "checkpoint", "initial_checkpoint", "data_dir", "broden", "images",
                "annotations", "val_images", "val_annotations", "grid", "against_published")


def _expand_home(args: argparse.Namespace) -> None:
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(lazy=True)
    given = list(sys.argv[1:] if argv is None else argv)
    own = {flag for action in parser._actions for flag in action.option_strings}
    if given and given[0].startswith("-") and given[0].split("=")[0] not in own:   # argparse would only say
        parser.error(f"unrecognized argument {given[0]}: options follow a command, "   # "command is required"
                     "e.g. hcgnet train --help")
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the (sub)command they were given to, so that the hint names its own --help
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    _expand_home(args)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`hcgnet predict --json | head`): stop quietly. Python would still try to flush
        # stdout at exit and print a second error, so point it at devnull (as the Python docs recommend).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except HCGNetError as e:
        if hasattr(e, "exit_code"):  # a run stopped by a signal: the resume hint, with the shell's 130/143
            if not getattr(e, "quiet", False):  # torchrun's other ranks leave it to rank 0
                print(f"hcgnet: {e}", file=sys.stderr)
            return e.exit_code
        from hcgnet.data.errors import error_message

        print(f"hcgnet: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hcgnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

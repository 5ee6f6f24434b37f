"""``hcgnet bench``: training and inference speed and peak memory of configurations, compared in one process.

Configurations run one after the other in the same process (timings on shared machines drift, so ratios
between neighbours are what to trust). Each reports the median and the spread of the timed steps after a
warm-up, and the peak memory it added: the process's resident set sampled during the run on a CPU,
``torch.cuda.max_memory_allocated`` on a GPU. On a CPU the allocator keeps what earlier configurations
freed, so only a process's first configuration has an exact memory figure: ``isolate=True`` runs each
configuration in a fresh process (exact memory for every one, timings across processes).

Besides the eager model, inference can be timed in the deployment runtimes of :mod:`hcgnet.export`
(TorchScript, ONNX Runtime, a ``torch.export`` program, OpenVINO on the ONNX export), each exported from the
same weights. ``compile`` is ``torch.compile``; for inference with the weights frozen, as ``hcgnet eval
--compile`` runs it (:func:`hcgnet.compiled.compile_frozen`).

:func:`against_published` times the published implementation's own model class (imported from a clone,
:mod:`hcgnet.published`) beside hcgnet's configurations, with the same weights, in interleaved rounds.
"""
import csv
import functools
import itertools
import math
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from hcgnet.compiled import compile_frozen
from hcgnet.errors import HCGNetError
from hcgnet.evaluation import AMP_DTYPES, device_of
from hcgnet.models import create_model
from hcgnet.models.checkpoints import check_checkpoint_file, names_a_file
from hcgnet.models.registry import first_conv_in_chans

MODES = ("train", "infer", "latency")
DTYPES = ("fp32", "bf16", "fp16")
RUNTIMES = ("eager", "torchscript", "onnx", "pt2", "int8", "openvino")
CSV_FIELDS = ("mode", "runtime", "dtype", "channels_last", "memory_efficient", "compile", "batch", "size",
              "images_per_s", "latency_ms", "median_s", "min_s", "max_s", "peak_memory_added_mb", "steps",
              "first_loss", "final_loss", "implementation", "process_peak_rss_mb")


@dataclass
class BenchConfig:
    mode: str
    dtype: str = "fp32"
    channels_last: bool = False
    memory_efficient: bool = False
    compile: bool = False
    runtime: str = "eager"
    implementation: str = "hcgnet"  # or "published": the published code's own class (always eager fp32)


def describe(r: Dict) -> str:
    """A configuration (a :class:`BenchConfig` as a dict, or a result) in a few words."""
    if r.get("implementation") == "published":
        return "published eager fp32"
    if r["runtime"] == "int8":
        return "int8 pt2e compiled"
    if r["runtime"] != "eager":
        return f"{r['runtime']} {r['dtype']}"
    return " ".join([r["dtype"]] + [name for name in ("channels_last", "memory_efficient", "compile") if r[name]])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_peak_rss_mb() -> Optional[float]:
    """The process's resident high-water mark (``VmHWM``: the most that ``top`` showed for it), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak memory added while the block runs (a sampling thread on the CPU, the allocator on a GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _exported_runner(model: nn.Module, runtime: str, x: torch.Tensor, folder: str, dtype: str = "fp32") -> Callable:
    """The model exported to ``runtime`` (checked against eager by :func:`export_model`), as a callable;
    ``"int8"``: quantized by torchao's PT2E flow and compiled, as ``hcgnet eval --int8`` runs it (calibrated on
    ``x``: this times speed; the accuracy check is ``tests/test_int8.py``); ``"openvino"``: the ONNX export
    compiled by OpenVINO at precision ``dtype`` (:class:`hcgnet.export.OpenVINOModel`)."""
    if runtime == "int8":
        from hcgnet.quantize import quantize_pt2e

        return quantize_pt2e(model.cpu().eval(), [x.cpu()], compile=True, batch=len(x))
    from hcgnet.export import SUFFIXES, OpenVINOModel, export_model

    fmt = "onnx" if runtime == "openvino" else runtime  # OpenVINO reads the ONNX export; the others are formats
    # The exports take any batch and input size, and every configuration builds the same weights (seed 0),
    # so one export per runtime serves a whole sweep.
    path = Path(folder) / ("model" + SUFFIXES[fmt])
    if not path.exists():
        export_model(model.cpu(), str(path), fmt, tuple(x.shape[1:]))
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=x.device)
    if fmt == "pt2":
        return torch.export.load(str(path)).module().to(x.device)
    if runtime == "openvino":
        return OpenVINOModel(path, dtype)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda t: session.run(None, {name: t.cpu().numpy()})[0]


#: How a process's allocator treats freed memory, as the results name it (:mod:`hcgnet.allocator`).
FREED_MEMORY = {"kept": "freed memory kept (glibc mallopt)", "returned": "freed memory returned (glibc mallopt)"}
DEFAULT_ALLOCATOR = "the C library's defaults"


def run_config(name: str, cfg: BenchConfig, batch: int, size: Sequence[int], steps: int, warmup: int,
               device: torch.device, num_classes: int = 10, export_dir: Optional[str] = None,
               build: Optional[Callable[[BenchConfig], nn.Module]] = None) -> Dict:
    """Time ``steps`` steps of one configuration after ``warmup`` untimed ones. Exported runtimes reuse
    the file in ``export_dir`` when an earlier configuration wrote it there. ``build(cfg)`` makes the network
    (default: hcgnet's ``name`` initialised from seed 0)."""
    torch.manual_seed(0)
    if build is not None:
        model = build(cfg)
    elif names_a_file(name):
        model = checkpoint_network(name, cfg.memory_efficient)[0]
    else:
        model = create_model(name, num_classes=num_classes, memory_efficient=cfg.memory_efficient)
    n = 1 if cfg.mode == "latency" else batch
    in_chans = first_conv_in_chans(model)
    x = torch.randn(n, in_chans, *size)
    train = cfg.mode == "train"
    model.train(train)
    with tempfile.TemporaryDirectory() as scratch:
        runner: Callable = model
        if cfg.runtime != "eager":
            runner = _exported_runner(model, cfg.runtime, x, export_dir or scratch, cfg.dtype)
        model, x = model.to(device), x.to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if cfg.runtime == "eager":
            if cfg.compile:  # inference compiles as `hcgnet eval --compile` does: weights frozen
                runner = torch.compile(model) if train else compile_frozen(model, n)
        y = torch.randint(0, num_classes, (n,), device=device)
        dtype = AMP_DTYPES["none" if cfg.dtype == "fp32" else cfg.dtype]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if train else None
        scaler = torch.amp.GradScaler("cuda") if train and cfg.dtype == "fp16" else None

        def step() -> Optional[torch.Tensor]:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if not train:
                    with torch.no_grad():
                        runner(x)
                    return None
                loss = nn.functional.cross_entropy(runner(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            return loss.detach()

        times: List[float] = []
        with _PeakMemory(device) as memory:
            for i in range(warmup + steps):
                start = time.perf_counter()
                loss = step()
                _sync(device)
                times.append(time.perf_counter() - start)
                if i == 0:
                    first_loss = loss
    first_step, times = times[0], times[warmup:]
    median = statistics.median(times)
    result = {**asdict(cfg), "batch": n, "size": list(size), "median_s": median, "min_s": min(times),
              "max_s": max(times), "first_step_s": first_step, "peak_memory_added_mb": memory.added_mb,
              "process_peak_rss_mb": process_peak_rss_mb(), "steps": steps}
    if cfg.mode == "latency":
        result["latency_ms"] = 1000 * median
    else:
        result["images_per_s"] = n / median
    if train:  # every configuration starts from the same weights and trains on the same batch
        result["first_loss"], result["final_loss"] = first_loss.item(), loss.item()
    return result


def configurations(modes: Sequence[str], dtypes: Sequence[str], channels_last: Sequence[bool],
                   memory_efficient: Sequence[bool], compile: Sequence[bool],
                   runtimes: Sequence[str]) -> List[BenchConfig]:
    """The grid, in order. Memory-efficient only matters for training; an exported runtime only runs
    inference, once per mode, in fp32 when ``dtypes`` has it (its graph is fixed at export), except OpenVINO, once
    per dtype (its precision is chosen when it compiles the export), and int8 (its own precision) once.
    :func:`not_run` says what this leaves out of the request."""
    configs = []
    for mode in modes:
        for runtime in runtimes:
            if runtime != "eager":
                if mode != "train":
                    configs.extend(BenchConfig(mode, dtype, runtime=runtime)
                                   for dtype in runtime_dtypes(runtime, dtypes))
                continue
            for dtype, cl, me, comp in itertools.product(dtypes, channels_last, memory_efficient, compile):
                if not (me and mode != "train"):
                    configs.append(BenchConfig(mode, dtype, cl, me, comp))
    return configs


def runtime_dtypes(runtime: str, dtypes: Sequence[str]) -> List[str]:
    """The ``dtypes`` an exported runtime runs: OpenVINO each, int8 its own (recorded as fp32), the others fp32."""
    if runtime == "openvino":
        return list(dtypes)
    return ["fp32"] if runtime == "int8" or "fp32" in dtypes else []


def not_run(modes: Sequence[str], dtypes: Sequence[str], channels_last: Sequence[bool],
            memory_efficient: Sequence[bool], compile: Sequence[bool], runtimes: Sequence[str]) -> List[str]:
    """What :func:`configurations` leaves out of a request, and why, one line each: a user who asked for onnx in
    bf16 is told it did not run rather than handed fp32 rows alone."""
    notes = []
    inference = [m for m in modes if m != "train"]
    exported = [r for r in runtimes if r != "eager"]

    def names(runtimes: Sequence[str], one: str, many: str) -> str:
        return f"{', '.join(runtimes)} {one if len(runtimes) == 1 else many}"

    if "train" in modes and exported:
        notes.append(f"{names(exported, 'times', 'time')} inference only: {'its' if len(exported) == 1 else 'their'} "
                     "train rows not run (--runtimes eager times training)")
    fixed = [r for r in exported if r not in ("openvino", "int8")]
    others = [d for d in dtypes if d != "fp32"]
    if inference and fixed and others:
        graphs = "its graph is" if len(fixed) == 1 else "their graphs are"
        if "fp32" in dtypes:
            lost = ", ".join(f"{r} {d}" for r in fixed for d in others)
            notes.append(f"{names(fixed, 'runs', 'run')} fp32 only ({graphs} fixed at export): {lost} not run"
                         + (" (openvino runs bf16)" if "bf16" in others and "openvino" in exported else ""))
        else:
            notes.append(f"{names(fixed, 'runs', 'run')} fp32 only ({graphs} fixed at export): not run; add fp32 to "
                         "--dtypes to time " + ("it" if len(fixed) == 1 else "them")
                         + (", or time bf16 in --runtimes openvino" if "bf16" in others and "openvino" not in exported
                            else ""))
    ran = [r for r in exported if inference and runtime_dtypes(r, dtypes)]
    for flag, values in (("--channels-last", channels_last), ("--compile", compile)):
        if ran and True in values:
            notes.append(f"{flag} applies to eager: {names(ran, 'runs its', 'run their')} export as it is")
    if "eager" in runtimes and inference and tuple(memory_efficient) == (True,):
        notes.append(f"--memory-efficient on is training's (recomputation in backward): eager {', '.join(inference)} "
                     "not run; add --modes train, or --memory-efficient both")
    return notes


def plan(modes: Sequence[str], dtypes: Sequence[str], channels_last: Sequence[bool],
         memory_efficient: Sequence[bool], compile: Sequence[bool],
         runtimes: Sequence[str]) -> Tuple[List[BenchConfig], List[str]]:
    """:func:`configurations` and :func:`not_run`'s notes; refused in one line when nothing asked for can run."""
    configs = configurations(modes, dtypes, channels_last, memory_efficient, compile, runtimes)
    notes = not_run(modes, dtypes, channels_last, memory_efficient, compile, runtimes)
    if not configs:
        raise HCGNetError("nothing to time: " + "; ".join(notes))
    return configs, notes


def benchmark(
    name: str, modes: Sequence[str] = ("train", "infer"), dtypes: Sequence[str] = ("fp32",),
    channels_last: Sequence[bool] = (False,), memory_efficient: Sequence[bool] = (False,),
    compile: Sequence[bool] = (False,), batch: int = 64, size: Optional[Sequence[int]] = None, steps: int = 10,
    warmup: int = 3, device: Optional[str] = None, progress=None, runtimes: Sequence[str] = ("eager",),
    batches: Optional[Sequence[int]] = None, sizes: Optional[Sequence[Sequence[int]]] = None,
    isolate: bool = False, as_trained: bool = True, note: Optional[Callable[[str], None]] = None,
    start: Optional[Callable[[int], None]] = None,
) -> List[Dict]:
    """Every combination of the given settings, in order, for every batch size in ``batches`` (default
    ``[batch]``) and input size in ``sizes`` (default ``[size]``, the model's own if None). ``isolate``: each
    in a fresh process, under the allocator setting ``hcgnet train`` gives it (``as_trained``) or the C
    library's defaults (:func:`run_fresh`). ``note``: called with each of :func:`not_run`'s lines before any
    timing; ``start``: then with the number of configurations about to be timed."""
    dev = device_of(device)
    batches = list(batches or [batch])
    check_request(dev, modes, dtypes, runtimes, batches, steps, warmup)
    configs, notes = plan(modes, dtypes, channels_last, memory_efficient, compile, runtimes)
    own_size, own_classes = model_defaults(name)
    classes = own_classes if names_a_file(name) else 10   # a checkpoint's own classifier
    if sizes is None:
        sizes = [size or own_size]
    for line in notes if note is not None else ():
        note(line)
    todo = [(b, s, cfg) for b, s, cfg in itertools.product(batches, sizes, configs)
            if cfg.mode != "latency" or b == batches[0]]   # latency: batch 1 whatever the batch sweep
    if start is not None:
        start(len(todo))
    results = []
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as export_dir:
        for b, s, cfg in todo:
            args = (name, cfg, b, tuple(s), steps, warmup, dev, classes, export_dir)
            if isolate:
                with context.Pool(1) as pool:
                    results.append(pool.apply(run_fresh, (args, as_trained)))
            else:
                results.append(run_config(*args))
            if progress is not None:
                progress(results[-1])
    return results


def check_request(dev: torch.device, modes: Sequence[str], dtypes: Sequence[str], runtimes: Sequence[str],
                  batches: Sequence[int], steps: int, warmup: int) -> None:
    """The refusals of a timing request, before any work: one line each."""
    if steps < 1:
        raise HCGNetError(f"--steps must be 1 or more (the timed steps), got {steps}")
    if warmup < 0:
        raise HCGNetError(f"--warmup must be 0 or more, got {warmup}")
    for mode in modes:
        if mode not in MODES:
            raise HCGNetError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise HCGNetError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        if dtype == "fp16" and dev.type != "cuda":
            raise HCGNetError("fp16 needs a GPU; on the CPU use bf16")
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise HCGNetError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        if runtime in ("int8", "openvino") and dev.type != "cpu":
            raise HCGNetError(f"the {runtime} runtime runs on the CPU; add --device cpu")
    if "eager" not in runtimes and all(mode == "train" for mode in modes):
        these = f"the {', '.join(runtimes)} runtimes time" if len(runtimes) > 1 else f"the {runtimes[0]} runtime times"
        raise HCGNetError(f"{these} inference only; add --modes infer (or latency), or --runtimes eager to time "
                          "training")
    if min(batches) < 2 and "train" in modes:
        raise HCGNetError("training needs a batch of at least 2 (the gates' BatchNorm1d)")


def model_defaults(name: str) -> Tuple[Tuple[int, int], int]:
    """The model's own input size (H, W) and class count, from its ``pretrained_cfg`` (built on the meta
    device: shapes only); for a checkpoint file, the size it was trained at and its classes."""
    if names_a_file(name):
        from hcgnet.inference import data_config_of

        model, meta = checkpoint_network(name)
        return tuple(data_config_of(model, meta).input_size[1:]), model.num_classes
    with torch.device("meta"):
        cfg = create_model(name).pretrained_cfg
    return tuple(cfg["input_size"][1:]), int(cfg["num_classes"])


def checkpoint_network(path: str, memory_efficient: bool = False) -> Tuple[nn.Module, Dict[str, str]]:
    """The network a checkpoint file holds, with its weights and input channels, and the checkpoint's metadata:
    what ``bench --model FILE`` times."""
    from hcgnet.inference import named_checkpoint_model

    return named_checkpoint_model(str(check_checkpoint_file(path)), memory_efficient=memory_efficient)


def plot_formats() -> List[str]:
    """The file formats matplotlib's ``savefig`` writes (``png``, ``svg``, ``pdf``...), named by extension."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_outputs(outputs: Dict[str, Optional[str]], force: bool = False) -> None:
    """The files of ``outputs`` (flag -> path or None), refused in one line before any timing: each one a file
    hcgnet may write (:func:`hcgnet.files.check_output_file`: one already there only with ``force``), no two the
    same file (the later would replace the earlier), and the ``--plot`` in a format matplotlib writes (it would
    fail only after the whole benchmark)."""
    from hcgnet.files import check_output_file

    named: Dict[str, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        check_output_file(path, flag, force=force)
        same = named.setdefault(os.path.realpath(path), flag)
        if same != flag:
            raise HCGNetError(f"{same} and {flag} both name {path}; give each its own file")
    if outputs.get("--plot"):
        formats = plot_formats()
        suffix = Path(outputs["--plot"]).suffix.lower().lstrip(".")
        if suffix not in formats:
            what = f"ends in .{suffix}, which matplotlib cannot write" if suffix else "has no extension"
            raise HCGNetError(f"--plot {outputs['--plot']} {what}; name a .png file (or "
                              + ", ".join(f".{f}" for f in formats if f != "png") + ")")


def write_csv(results: Sequence[Dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            writer.writerow({**r, "size": "x".join(map(str, r["size"]))})


def plot(results: Sequence[Dict], path: str, title: str = "") -> None:
    """Step time and peak memory against batch size, one line per mode, configuration and input size (or
    against the input side, when only one batch size was measured): how cost grows with each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_batch = len({r["batch"] for r in results if r["mode"] != "latency"}) > 1
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines: Dict[str, List[Dict]] = {}
    for r in results:
        side = "x".join(map(str, r["size"]))
        label = f"{r['mode']}: {describe(r)}" + (f", {side}" if by_batch else "")
        lines.setdefault(label, []).append(r)
    for label, rows in lines.items():
        rows = sorted(rows, key=lambda r: (r["batch"], r["size"][0] * r["size"][1]))
        xs = [r["batch"] if by_batch else r["size"][0] * r["size"][1] for r in rows]
        ax_time.plot(xs, [1000 * r["median_s"] for r in rows], "o-", label=label)
        ax_mem.plot(xs, [max(r["peak_memory_added_mb"], 1e-3) for r in rows], "o-", label=label)
    for ax, ylabel in ((ax_time, "median step time (ms)"), (ax_mem, "peak memory added (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size" if by_batch else "pixels per image (height x width)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_fresh(args: tuple, as_trained: bool = True) -> Dict:
    """:func:`run_config` (``args``) in a fresh process; ``as_trained``: under the allocator setting that
    ``hcgnet train`` runs the configuration with (:func:`hcgnet.allocator.for_training`), otherwise under the C
    library's defaults (the published code's own scripts). The result names the setting (``"allocator"``)."""
    from hcgnet.allocator import for_training

    setting = for_training(args[1].memory_efficient) if as_trained else None
    return {**run_config(*args), "allocator": FREED_MEMORY.get(setting, DEFAULT_ALLOCATOR)}


def _add_peak_memory(rows: List[Dict], lineup: Sequence[BenchConfig], rounds: int, args: tuple, name: str) -> None:
    """Each training configuration's peak resident memory, in a fresh process per round (interleaved like the
    timings): the published code under the C library's defaults, as its own scripts run, hcgnet's as
    ``hcgnet train`` runs it. A row's figure is its largest over the rounds, its ratio the largest per-round
    ratio to the published code's: the worst case, not a typical one."""
    context = multiprocessing.get_context("spawn")
    trained = [(row, cfg) for row, cfg in zip(rows, lineup) if cfg.mode == "train"]
    for row, _ in trained:
        row["process_peak_rss_mb_rounds"] = []
    for _ in range(rounds):
        for row, cfg in trained:
            with context.Pool(1) as pool:  # a fresh allocator: the peak is this configuration's alone
                r = pool.apply(run_fresh, ((name, cfg, *args), cfg.implementation == "hcgnet"))
            row["process_peak_rss_mb_rounds"].append(r["process_peak_rss_mb"])
            row["memory_allocator"] = r["allocator"]
    base = next((row["process_peak_rss_mb_rounds"] for row, cfg in trained if cfg.implementation == "published"), None)
    for row, _ in trained:
        peaks = row["process_peak_rss_mb_rounds"]
        if None in peaks:  # no /proc here: no resident-memory figure
            continue
        row["process_peak_rss_mb"] = max(peaks)
        if base and None not in base:
            row["rss_ratio"] = max(a / b for a, b in zip(peaks, base))


def published_variant(model: str) -> str:
    """``--model`` as a network the published implementation has, or a one-line refusal saying which to pass. A
    checkpoint file is read for the network it names: the side-by-side builds both implementations from the
    published class's seed-0 weights, never from a file, so the variant's name is what to pass."""
    from hcgnet.published import published_names

    has = ", ".join(published_names())
    if not names_a_file(model):
        if model not in published_names():
            raise HCGNetError(f"--against-published: the published implementation has {has}, not {model!r}")
        return model
    from hcgnet.inference import checkpoint_metadata

    held = checkpoint_metadata(str(check_checkpoint_file(model))).get("model_name")
    if held not in published_names():
        what = f"holds {held}" if held else "does not say which network it holds"
        raise HCGNetError(f"--against-published: {model} {what}; the published implementation has {has}: pass "
                          "--model with one of them")
    size, own = model_defaults(model)[0], model_defaults(held)[0]
    at = f" --size {size[0]}" if size != own and size[0] == size[1] else ""
    raise HCGNetError(f"--against-published times both implementations with the published class's own seed-0 "
                      f"weights, not a checkpoint's: {model} holds {held}, so pass --model {held}{at}")


def build_for(path: str, name: str, num_classes: int, cfg: BenchConfig) -> nn.Module:
    """The network of one side-by-side configuration: the published class, or hcgnet's holding its weights
    (a plain function, so that a fresh process can be handed it)."""
    from hcgnet.published import hcgnet_twin, published_model

    published = published_model(path, name, num_classes, seed=0)
    if cfg.implementation == "published":
        return published
    return hcgnet_twin(published, name, num_classes, memory_efficient=cfg.memory_efficient)


def gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5,
                device: Optional[torch.device] = None) -> float:
    """The machine's matrix-multiply rate (GFLOP/s, median of ``repeats``) at ``n`` x ``n``: the yardstick of
    "share of the machine's peak", measured in the same process with the same threads as the workloads."""
    device = device or torch.device("cpu")
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def machine_description() -> Dict[str, object]:
    """The CPU's model and the instruction sets that decide its kernels (figures mean nothing without them)."""
    info: Dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                     None)
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info["cpu"] = model
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    except OSError:
        info["cpu"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_context(name: str, steps: int, warmup: int, device: torch.device, notes: Sequence[str] = ()) -> Dict:
    """What a results file records besides its figures, the same keys in plain (``results``) and side-by-side
    (``rows``) files: the model, the steps, the device, the machine (:func:`machine_description`: the CPU's
    instruction sets), the date, what was asked but not run (:func:`not_run`), and the provenance
    (:func:`hcgnet.provenance.provenance`: code version and commit, libraries, the command line, a checkpoint's
    SHA-256)."""
    from hcgnet.provenance import provenance

    record = provenance([name] if names_a_file(name) else [], device)
    return {"model": name, "steps": steps, "warmup": warmup, "device": str(device), "machine": machine_description(),
            "date": record["date"][:10], "not_run": list(notes), "provenance": record}


def machine_line(record: Dict) -> str:
    """One console line naming where a record's figures come from (printed above its table)."""
    m, p = record["machine"], record["provenance"]
    flags = ", ".join(m.get("cpu_flags") or []) or "no AVX2 or AVX-512"
    gpu = f" ({m['gpu']})" if record["device"].startswith("cuda") and m.get("gpu") else ""
    code = f"hcgnet {p['hcgnet']}" + (f" at {p['git_commit'][:12]}" if p.get("git_commit") else "")
    return (f"machine: {m.get('cpu') or 'unknown CPU'} ({flags}; torch's kernels {p['cpu_capability']}), "
            f"{m['threads']} threads, device {record['device']}{gpu}; torch {m['torch']}, {code}; {p['date']}")


def figure(value: float) -> str:
    """``value`` with at least three significant digits and one decimal (1889.4, 62.9, 1.00, 0.0630): a spread
    of 0.9 to 1.1 ms must not print as 0.001-0.001 s."""
    if not math.isfinite(value) or value <= 0:
        return f"{value:.1f}"
    return f"{value:.{max(1, 2 - math.floor(math.log10(value)))}f}"


#: A row whose slowest step (or round) took more than this many times its fastest is flagged: on a shared
#: machine that is another process's work, not the configuration's.
NOISY_SPREAD = 2.0


def _times(r: Dict) -> Tuple[float, float]:
    """The fastest and slowest of a row's timings: its steps, or for a side-by-side row its rounds' medians."""
    times = r.get("round_medians_s") or (r["min_s"], r["max_s"])
    return min(times), max(times)


def speed_and_spread(r: Dict) -> Tuple[str, str]:
    """A row's headline speed and the spread of its timings in the same unit: ms for latency, img/s otherwise."""
    fastest, slowest = _times(r)
    if r["mode"] == "latency":
        return f"{figure(r['latency_ms'])} ms", f"{figure(1000 * fastest)}-{figure(1000 * slowest)} ms"
    return (f"{figure(r['images_per_s'])} img/s",
            f"{figure(r['batch'] / slowest)}-{figure(r['batch'] / fastest)} img/s")


def noisy(r: Dict) -> str:
    """The warning for a row whose timings spread over more than :data:`NOISY_SPREAD` times, else ''."""
    fastest, slowest = _times(r)
    if fastest > 0 and slowest / fastest > NOISY_SPREAD:
        what = "round" if r.get("round_medians_s") else "step"
        return f"noisy: the slowest {what} took {slowest / fastest:.1f}x the fastest; was the machine busy?"
    return ""


def result_line(r: Dict) -> str:
    """One row of ``hcgnet bench``'s table."""
    speed, spread = speed_and_spread(r)
    warning = noisy(r)
    return (f"{r['mode']:7s} {describe(r):40s} batch {r['batch']:4d} {'x'.join(map(str, r['size'])):>9s}"
            f"  {speed:>14s}  (spread {spread})  +{r['peak_memory_added_mb']:.0f} MB"
            + (f"  loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}" if "final_loss" in r else "")
            + (f"  {warning}" if warning else ""))


def published_table(result: Dict, memory: bool = False) -> List[str]:
    """:func:`against_published`'s result as the lines of a table: what was timed, the machine, then one row per
    configuration with its time over the published code's and its speed-up (the README's targets are speed-ups)."""
    size, rounds = result["size"], result["rounds"]
    timed = ", ".join(dict.fromkeys(f"batch {r['batch']}" for r in result["rows"]))  # latency: batch 1
    lines = [f"{result['model']}, {timed}, {size[0]}x{size[1]}, {rounds} round{'s' if rounds != 1 else ''}; "
             "matrix-multiply peak " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in result["peak_gflops"].items()),
             machine_line(result),
             f"{'mode':7s} {'configuration':36s} {'speed':>14s} {'x published time':>16s} {'speed-up':>8s} "
             f"{'GFLOP/s':>8s} {'% of matmul peak':>16s}"
             + (f" {'peak RSS':>9s} {'x published':>11s}" if memory else "")]
    for r in result["rows"]:
        line = (f"{r['mode']:7s} {describe(r):36s} {speed_and_spread(r)[0]:>14s} {r['time_ratio']:16.2f} "
                f"{r['speedup']:7.2f}x {r['gflops']:8.1f} {r['share_of_peak']:16.1%}")
        if memory and r.get("process_peak_rss_mb"):
            line += f" {r['process_peak_rss_mb']:6.0f} MB {r.get('rss_ratio', 1):11.2f}"
        warning = noisy(r)
        lines.append(line + (f"  {warning}" if warning else ""))
    lines.append(f"x published time: this configuration's step time over the published code's in the same round "
                 f"(the median of {rounds}; below 1 is faster); speed-up: the published time over this one's; "
                 "% of matmul peak: achieved GFLOP/s over this machine's matrix-multiply rate, in its dtype")
    if memory:
        lines.append(f"peak RSS: the largest of {rounds} fresh processes, one per round (hcgnet's under the allocator "
                     "setting hcgnet train gives it); its x published: the largest per-round ratio")
    return lines


def _flops_per_image(model: nn.Module, size: Sequence[int], mode: str) -> float:
    """FLOPs (2 per multiply-add) of one image's step: the forward pass, three times that for training
    (the backward pass computes gradients of both inputs and weights)."""
    from hcgnet.complexity import count_macs

    return 2 * count_macs(model, (first_conv_in_chans(model), *size)) * (3 if mode == "train" else 1)


def against_published(
    path: str, name: str, configs: Sequence[BenchConfig], batch: int, size: Optional[Sequence[int]] = None,
    steps: int = 5,
    warmup: int = 2, rounds: int = 3, num_classes: Optional[int] = None, device: Optional[str] = None,
    memory: bool = False, progress: Optional[Callable[[Dict], None]] = None,
) -> Dict:
    """hcgnet's ``configs`` against the published implementation's eager fp32 for each mode among them, at
    ``size`` and ``num_classes`` (default: the model's own), with identical weights (their logits checked equal first, :func:`hcgnet.published.paired_models`).

    Every configuration, the published one first, runs once per round, ``rounds`` times over; a
    configuration's figure is the median of its per-round medians, and its ratio to the published code is the
    median of the per-round ratios (time per step over the published code's in the same round: below 1 is
    faster). ``memory``: each training configuration once more in a fresh process for its peak resident
    memory (the process's high-water mark, as ``top`` shows it) and its ratio to the published code's; a
    memory-efficient one with freed memory handed back to the system, as ``hcgnet train`` runs it.
    Achieved GFLOP/s is set against this machine's matrix-multiply rate measured in the same run.

    The process keeps freed memory for reuse from the start (:func:`hcgnet.allocator.keep_freed_memory`, as
    ``hcgnet train`` runs), so the published code's timings run under the same allocator setting as hcgnet's."""
    from hcgnet.allocator import keep_freed_memory
    from hcgnet.published import paired_models

    dev = device_of(device)
    if rounds < 1:
        raise HCGNetError(f"--rounds must be 1 or more, got {rounds}")
    modes = list(dict.fromkeys(c.mode for c in configs))
    check_request(dev, modes, [c.dtype for c in configs], [c.runtime for c in configs], [batch], steps, warmup)
    own_size, own_classes = model_defaults(name)
    size = tuple(size or own_size)
    num_classes = own_classes if num_classes is None else num_classes
    published, ours = paired_models(path, name, num_classes, size)  # refused here unless the same network
    allocator = FREED_MEMORY["kept"] if keep_freed_memory() else DEFAULT_ALLOCATOR
    flops = {mode: _flops_per_image(ours, size, mode) for mode in modes}
    del published, ours
    lineup: List[BenchConfig] = []
    for mode in modes:
        lineup.append(BenchConfig(mode, implementation="published"))
        lineup += [c for c in configs if c.mode == mode and c.implementation == "hcgnet"]
    build = functools.partial(build_for, path, name, num_classes)
    peaks = {"fp32": gemm_gflops(torch.float32, device=dev)}
    if any(c.dtype == "bf16" for c in lineup):
        peaks["bf16"] = gemm_gflops(torch.bfloat16, device=dev)
    runs: List[List[Dict]] = [[] for _ in lineup]
    with tempfile.TemporaryDirectory() as export_dir:
        for round_ in range(rounds):
            for i, cfg in enumerate(lineup):
                r = run_config(name, cfg, batch, size, steps, warmup, dev, num_classes, export_dir, build)
                r["round"] = round_
                runs[i].append(r)
                if progress is not None:
                    progress(r)
    rows = []
    for cfg, config_runs in zip(lineup, runs):
        baseline = runs[lineup.index(BenchConfig(cfg.mode, implementation="published"))]
        row = {**asdict(cfg), "batch": config_runs[0]["batch"], "size": list(size),
               "round_medians_s": [r["median_s"] for r in config_runs],
               "median_s": statistics.median(r["median_s"] for r in config_runs),
               "time_ratio": statistics.median(r["median_s"] / b["median_s"] for r, b in zip(config_runs, baseline))}
        row["speedup"] = 1 / row["time_ratio"]
        row["images_per_s"] = row["batch"] / row["median_s"]
        if cfg.mode == "latency":
            row["latency_ms"] = 1000 * row["median_s"]
        row["gflops"] = flops[cfg.mode] * row["images_per_s"] / 1e9
        peak = peaks["bf16" if cfg.dtype == "bf16" else "fp32"]
        row["share_of_peak"] = row["gflops"] / peak
        rows.append(row)
    if memory:
        _add_peak_memory(rows, lineup, rounds, (batch, size, min(steps, 3), 1, dev, num_classes, None, build), name)
    return {**run_context(name, steps, warmup, dev), "num_classes": num_classes, "batch": batch, "size": list(size),
            "rounds": rounds, "published": str(path), "peak_gflops": peaks, "flops_per_image": flops,
            "allocator": allocator, "rows": rows,
            "runs": [r for config_runs in runs for r in config_runs]}

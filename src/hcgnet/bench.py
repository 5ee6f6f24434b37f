"""``hcgnet bench``: training and inference speed and peak memory of configurations, compared in one process.

Configurations run one after the other in the same process (timings on shared machines drift, so ratios
between neighbours are what to trust). Each reports the median and the spread of the timed steps after a
warm-up, and the peak memory it added: the process's resident set sampled during the run on a CPU,
``torch.cuda.max_memory_allocated`` on a GPU.
"""
import itertools
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from hcgnet.errors import HCGNetError
from hcgnet.models import create_model

MODES = ("train", "infer", "latency")
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class BenchConfig:
    mode: str
    dtype: str
    channels_last: bool
    memory_efficient: bool
    compile: bool


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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


def run_config(name: str, cfg: BenchConfig, batch: int, size: Sequence[int], steps: int, warmup: int,
               device: torch.device, num_classes: int = 10) -> Dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, memory_efficient=cfg.memory_efficient).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n = 1 if cfg.mode == "latency" else batch
    in_chans = model.stem.conv0.in_channels
    x = torch.randn(n, in_chans, *size, device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (n,), device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    train = cfg.mode == "train"
    model.train(train)
    runner: nn.Module = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if train else None
    scaler = torch.amp.GradScaler("cuda") if train and cfg.dtype == "fp16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if train:
                loss = nn.functional.cross_entropy(runner(x).float(), y)
            else:
                with torch.no_grad():
                    runner(x)
        if train:
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()

    times: List[float] = []
    with _PeakMemory(device) as memory:
        for i in range(warmup + steps):
            start = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {**asdict(cfg), "batch": n, "size": list(size), "median_s": median, "min_s": min(times),
              "max_s": max(times), "peak_memory_added_mb": memory.added_mb, "steps": steps}
    if cfg.mode == "latency":
        result["latency_ms"] = 1000 * median
    else:
        result["images_per_s"] = n / median
    return result


def benchmark(
    name: str, modes: Sequence[str] = ("train", "infer"), dtypes: Sequence[str] = ("fp32",),
    channels_last: Sequence[bool] = (False,), memory_efficient: Sequence[bool] = (False,),
    compile: Sequence[bool] = (False,), batch: int = 64, size: Optional[Sequence[int]] = None, steps: int = 10,
    warmup: int = 3, device: Optional[str] = None, progress=None,
) -> List[Dict]:
    """Every combination of the given settings (memory-efficient only matters for training), in order."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for mode in modes:
        if mode not in MODES:
            raise HCGNetError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise HCGNetError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        if dtype == "fp16" and dev.type != "cuda":
            raise HCGNetError("fp16 needs a GPU; on the CPU use bf16")
    if batch < 2 and "train" in modes:
        raise HCGNetError("training needs a batch of at least 2 (the gates' BatchNorm1d)")
    if size is None:
        probe = create_model(name)
        size = probe.pretrained_cfg["input_size"][1:]
    results = []
    for mode, dtype, cl, me, comp in itertools.product(modes, dtypes, channels_last, memory_efficient, compile):
        if me and mode != "train":
            continue
        cfg = BenchConfig(mode, dtype, cl, me, comp)
        results.append(run_config(name, cfg, batch, size, steps, warmup, dev))
        if progress is not None:
            progress(results[-1])
    return results

"""The activation observers' range search of ``--int8`` (PT2E): torchao's against ``hcgnet.observers``' on the
observers of a real calibration.

    python benchmarks/histogram_search.py --json benchmarks/results/histogram_search.json  # --force to replace

For each case, the model (random weights, batch-norm statistics from a few training-mode passes, as
``benchmarks/int8.py``) is exported and prepared with the X86InductorQuantizer's default config (torchao's
``HistogramObserver`` on every quantized activation) and calibrated on Fashion-MNIST training images (the
Debian package ``dataset-fashion-mnist``; flat backgrounds, the spiky histograms the search is slow on) or on
random images (smooth histograms). Then every observer's range search runs twice, torchao's and hcgnet's
(one after the other, so both see the same machine), timed, and the two ranges are compared: they must be equal.
This is the cost ``convert_pt2e`` pays once per observer, and ``hcgnet eval/predict/export --int8`` once per run.
"""
import argparse
import json
import time

import torch

import hcgnet
from hcgnet.bench import machine_description
from hcgnet.errors import HCGNetError, script_errors
from hcgnet.files import script_output_file, write_json

#: (model, image side, calibration images)
CASES = (("hcgnet_a1", 32, 512), ("hcgnet_b", 224, 32))
SOURCES = ("fashion-mnist", "random")


def _model(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = hcgnet.create_model(name, num_classes=10).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def _images(source: str, size: int, n: int, data_dir) -> torch.Tensor:
    if source == "random":
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    from hcgnet.data import build_data

    train = build_data("fashion-mnist", data_dir=data_dir, download=False, augment=False).train
    gray = torch.stack([train[i][0] for i in range(n)])   # 28 x 28, normalised
    gray = torch.nn.functional.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
    return gray.expand(-1, 3, -1, -1).contiguous()   # the gray channel three times: an RGB model's input


def bench_case(name: str, size: int, n: int, source: str, data_dir) -> dict:
    from torchao.quantization.pt2e import observer as torchao_observer
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config,
    )

    from hcgnet.layers import freeze_batch_norm
    from hcgnet.observers import HistogramObserver

    model = freeze_batch_norm(_model(name, size))
    images = _images(source, size, n, data_dir)
    with torch.no_grad():
        program = torch.export.export(model, (images[:32],)).module()
        prepared = prepare_pt2e(program, X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()))
        for batch in images.split(32):
            prepared(batch)
    observers = [m for m in prepared.modules() if type(m) is torchao_observer.HistogramObserver]
    theirs, ours, equal = [], [], 0
    for o in observers:
        start = time.perf_counter()
        a = torchao_observer.HistogramObserver._non_linear_param_search(o)
        theirs.append(time.perf_counter() - start)
        o.__class__ = HistogramObserver   # the same observer, hcgnet's search
        start = time.perf_counter()
        b = o._non_linear_param_search()
        ours.append(time.perf_counter() - start)
        o.__class__ = torchao_observer.HistogramObserver
        equal += bool(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))
    if equal != len(observers):
        raise SystemExit(f"{name} ({source}): {len(observers) - equal} of {len(observers)} ranges differ")
    return {"model": name, "size": size, "calibration_images": n, "source": source, "observers": len(observers),
            "equal_ranges": equal, "torchao_s": sum(theirs), "hcgnet_s": sum(ours),
            "speedup": sum(theirs) / max(sum(ours), 1e-9), "torchao_max_s": max(theirs), "hcgnet_max_s": max(ours)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(c[0] for c in CASES), help="comma-separated subset of the cases")
    p.add_argument("--sources", default=",".join(SOURCES), help="calibration images: fashion-mnist, random or both")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST is (default: hcgnet's data folder)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "histogram_search")
    wanted, sources = args.models.split(","), args.sources.split(",")
    for given, known, flag in ((wanted, [c[0] for c in CASES], "--models"), (sources, SOURCES, "--sources")):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise HCGNetError(f"{flag}: no {unknown[0]!r}; choose from {', '.join(known)}")
    torch.set_num_threads(args.threads)
    import torchao

    result = {"machine": machine_description(), "versions": {"torch": torch.__version__, "torchao": torchao.__version__},
              "date": time.strftime("%Y-%m-%d"), "cases": []}
    for name, size, n in CASES:
        for source in sources:
            if name in wanted:
                case = bench_case(name, size, n, source, args.data_dir)
                result["cases"].append(case)
                print(json.dumps(case), flush=True)
    if json_path:
        write_json(json_path, result, indent=1)


if __name__ == "__main__":
    with script_errors("histogram_search"):  # a mistake in what was asked: one line, exit code 2
        main()

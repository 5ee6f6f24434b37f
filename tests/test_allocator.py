"""hcgnet.allocator: freed memory goes back to the system (glibc), as memory-efficient training runs, or stays
with the process for the next step, as other training runs."""
import subprocess
import sys
import textwrap

import pytest

# A fresh process frees a 16 MiB tensor (glibc then serves blocks below 16 MiB from its heap), allocates 50
# tensors of 8 MiB, each followed by a small one that stays (as a network's small tensors do), and frees the
# 50: resident memory before, at the peak, after.
SCRIPT = textwrap.dedent("""
    import sys
    if sys.argv[1] == "on":
        from hcgnet.allocator import return_freed_memory
        assert return_freed_memory()
    import torch

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    big = torch.ones(4 << 20)
    del big
    before = rss()
    blocks, small = [], []
    for _ in range(50):
        blocks.append(torch.ones(2 << 20))
        small.append(torch.ones(1 << 14))
    peak = rss()
    del blocks
    print(before, peak, rss())
""")


def _run(setting):
    out = subprocess.run([sys.executable, "-c", SCRIPT, setting], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return [float(v) for v in out.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_freed_blocks_go_back_to_the_system():
    before, peak, after = _run("on")
    assert peak - before > 350  # the 400 MiB were resident
    assert after - before < 50  # and left when freed
    # glibc's defaults keep them: the setting is what made the difference
    before, peak, after = _run("off")
    assert after - before > 350


# A fresh process three times allocates 50 tensors of 8 MiB and frees them, as a training step does its
# activations: the page faults of the second and third times, when the first time's memory could have served
# (measured with glibc 2.36: 104,000-205,000 with its adaptive thresholds, the 400 MiB faulted in once or twice;
# 4,000-25,000 kept).
REUSE = textwrap.dedent("""
    import resource, sys
    if sys.argv[1] == "on":
        from hcgnet.allocator import keep_freed_memory
        assert keep_freed_memory()
    import torch

    for step in range(3):
        if step == 1:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.ones(2 << 20) for _ in range(50)]
        del blocks
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and getrusage's page faults")
def test_kept_memory_serves_the_next_step_without_page_faults():
    faults = {}
    for setting in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", REUSE, setting], check=True, capture_output=True, text=True,
                             timeout=120).stdout
        faults[setting] = int(out.split()[-1])
    assert faults["off"] > 90_000, faults  # glibc's defaults: the 400 MiB (102,400 pages) faulted in again
    assert faults["on"] < 50_000, faults  # kept: less than half of it


def test_train_returns_freed_memory_for_memory_efficient_runs_and_keeps_it_otherwise(monkeypatch, tmp_path, capsys):
    import hcgnet.allocator
    import hcgnet.training
    from hcgnet.cli import main

    calls, runs = [], []
    monkeypatch.setattr(hcgnet.allocator, "return_freed_memory", lambda: calls.append("return") or True)
    monkeypatch.setattr(hcgnet.allocator, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(hcgnet.training, "fit", lambda config: runs.append(config))
    for kwargs, expected in (('{"memory_efficient": true}', ["return"]), ('{"forget_gate": false}', ["keep"])):
        calls.clear()
        assert main(["train", "--model", "hcgnet_a1", "--data", "fashion-mnist", "--output", str(tmp_path / "r"),
                     "--model-kwargs", kwargs]) == 0
        assert calls == expected
    assert len(runs) == 2
    assert "go back to the system" in capsys.readouterr().out

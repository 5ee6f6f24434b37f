"""benchmarks/dispatch_count.py counts the operators a step dispatches, the published code's and hcgnet's."""
import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import load_script
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dispatch_count.py"
STANDIN = Path(__file__).parent / "published_standin"  # a clone's layout and names, hcgnet's arithmetic



def test_counts_what_a_linear_layer_dispatches():
    script = load_script(SCRIPT)
    layer, x = nn.Linear(3, 2), torch.randn(4, 3)
    # forward: the weight's transpose (a view) and one fused product with the bias
    assert script.count(layer, x, train=False) == {"t": 1, "addmm": 1}
    assert script.summary(script.count(layer, x, train=False)) == {"operators": 2, "kernels": 1}
    # training adds the backward: at least the weight's and the bias's gradients, each a kernel of its own
    trained = script.count(layer, x, train=True)
    assert trained["addmm"] == 1 and trained["mm"] >= 1 and trained["sum"] >= 2


def test_the_same_network_on_both_sides_dispatches_the_same(tmp_path):
    out = tmp_path / "counts.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--published", str(STANDIN), "--models", "hcgnet_a1",
                           "--side", "16", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["mode"]) for r in rows] == [("hcgnet_a1", "infer"), ("hcgnet_a1", "train")]
    for r in rows:  # the stand-in wraps hcgnet's own network: nothing differs
        assert r["published"] == r["hcgnet"] and r["differing_operators"] == {}
        assert 0 < r["hcgnet"]["kernels"] < r["hcgnet"]["operators"]


def test_a_wrong_clone_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--published", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("dispatch_count: error: ") and proc.stderr.count("\n") == 1

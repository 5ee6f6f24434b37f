"""torch.hub: the repository's hubconf.py lists the variants and builds them as hcgnet.create_model does, from
a clone that is not installed, never downloading weights."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hcgnet
from hcgnet import CheckpointError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the published implementation's exact parameter counts (10 classes for A1-A3, 1000 for B and C)
PUBLISHED_PARAMS = {"hcgnet_a1": 1_065_301, "hcgnet_a2": 3_069_149, "hcgnet_a3": 11_239_897,
                    "hcgnet_b": 12_845_501, "hcgnet_c": 42_153_208}


def hub_entry_points():
    """What torch.hub.list shows: hubconf's public callables."""
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, sorted(name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_"))


def test_the_entry_points_are_the_variants_and_any_spec():
    module, names = hub_entry_points()
    assert names == sorted(["hcgnet_a1", "hcgnet_a2", "hcgnet_a3", "hcgnet_b", "hcgnet_c", "hcgnet"])
    for name in names:
        assert getattr(module, name).__doc__, name  # what torch.hub.help shows
    for dependency in module.dependencies:  # torch.hub checks these before loading the file
        assert importlib.util.find_spec(dependency) is not None, dependency


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_hub_load_builds_the_published_networks(name):
    with torch.device("meta"):
        model = torch.hub.load(str(REPO), name, source="local")
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


def test_hub_load_takes_create_models_arguments_and_the_published_checkpoint_format():
    io = torch.load(FIXTURES / "cifar_A1.io.pt", map_location="cpu", weights_only=True)
    model = torch.hub.load(str(REPO), "hcgnet_a1", source="local",
                           checkpoint_path=str(FIXTURES / "cifar_A1.official.pth.tar")).eval()
    with torch.no_grad():
        assert (model(io["x"]) - io["y"]).abs().max().item() < 1e-4  # the published implementation's logits
    spec = torch.hub.load(str(REPO), "hcgnet", "HCGNet-(2,2,2)-(k=8,8,8)", source="local", num_classes=5)
    assert spec.num_classes == 5
    assert str(spec) == str(hcgnet.create_model("HCGNet-(2,2,2)-(k=8,8,8)", num_classes=5))


def test_hub_pretrained_never_downloads_and_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HCGNET_HOME", str(tmp_path))
    with torch.device("meta"), pytest.raises(CheckpointError, match="HCGNet_B_best.pth.tar") as e:
        torch.hub.load(str(REPO), "hcgnet_b", source="local", pretrained=True)
    assert str(tmp_path) in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_clone_that_is_not_installed_loads_its_own_package(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "src", clone / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copy(REPO / "hubconf.py", clone / "hubconf.py")
    code = ("import torch, sys; m = torch.hub.load(sys.argv[1], 'hcgnet', 'HCGNet-(1,1,1)-(k=4,4,4)', "
            "source='local'); import hcgnet; print(hcgnet.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(clone)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(clone / "src")

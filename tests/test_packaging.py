"""What `pip install hcgnet` gets: the wheel holds every module and every data file the package reads at run time
(recipes, ablation grids), and its command-line entry point."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "hcgnet"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building the wheel needs setuptools 77 or later (pyproject.toml)")
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # a copy of what the build reads, as it is in the working tree: building writes build/ and egg-info beside it
    for path in [REPO / "pyproject.toml", REPO / "README.md", *PACKAGE.rglob("*")]:
        if path.is_file() and "__pycache__" not in path.parts:
            target = build / "src" / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             str(build / "src"), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [built] = out.glob("hcgnet-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_every_file_of_the_package(wheel):
    names = set(wheel.namelist())
    expected = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert any(name.endswith(".yaml") for name in expected)  # the recipes and grids are among them
    assert expected - names == set()


def test_the_wheel_declares_the_command_line(wheel):
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "hcgnet = hcgnet.cli:main" in wheel.read(entry_points).decode()

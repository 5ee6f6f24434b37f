"""atomic_path: the target is replaced in one step on success and untouched on failure; output paths are
checked before work starts."""
import json
from pathlib import Path

import pytest

from hcgnet.errors import HCGNetError
from hcgnet.files import atomic_path, can_write_in, check_output_file, check_output_folder, distinct_names, write_json


def test_success_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        open(tmp, "wb").write(b"new")
        assert target.read_bytes() == b"old"   # written, but nothing replaced until the block succeeds
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix=".pt2") as tmp:
            assert tmp.endswith(".pt2")
            open(tmp, "wb").write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_write_json_writes_whole_files_or_keeps_the_old_one(tmp_path):
    target = tmp_path / "results.json"
    assert write_json(target, {"top1": 0.5, "path": Path("a/b")}, default=str) == target
    assert target.read_text() == '{\n  "top1": 0.5,\n  "path": "a/b"\n}\n'
    with pytest.raises(TypeError):   # fails while serialising, after the temporary file was opened
        write_json(target, {"top1": 0.9, "path": Path("c")})
    assert json.loads(target.read_text()) == {"top1": 0.5, "path": "a/b"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_json(target, [1, 2], indent=None)
    assert target.read_text() == "[1, 2]\n"


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "new.json") == tmp_path / "new.json"
    (tmp_path / "old.json").write_text("x")
    assert check_output_file(tmp_path / "old.json", force=True) == tmp_path / "old.json"
    with pytest.raises(HCGNetError, match="--force"):
        check_output_file(tmp_path / "old.json", force=False)
    with pytest.raises(HCGNetError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(HCGNetError, match="does not exist"):
        check_output_file(tmp_path / "no" / "x.json")
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]   # checking writes nothing


def test_check_output_folder_refuses_earlier_results_without_force(tmp_path):
    out = tmp_path / "new" / "deeper"
    assert check_output_folder(out, "the tables", ["a.csv"]) == out
    assert not out.exists()                                    # checking makes nothing
    out.mkdir(parents=True)
    (out / "other.txt").write_text("x")
    assert check_output_folder(out, "the tables", ["a.csv", "b.json"]) == out   # other files do not count
    (out / "b.json").write_text("x")
    with pytest.raises(HCGNetError, match=r"already holds b\.json.*--force"):
        check_output_folder(out, "the tables", ["a.csv", "b.json"])
    assert check_output_folder(out, "the tables", ["a.csv", "b.json"], force=True) == out
    with pytest.raises(HCGNetError, match="is a file"):
        check_output_folder(out / "b.json", "the tables")


@pytest.mark.parametrize("below", ["x", "x/y", "x/report.json"])
def test_an_output_below_a_file_is_refused_naming_the_file(tmp_path, below):
    """``notes.txt/x``: nothing can be made below a file; said before any work (it was said after a whole attack,
    or as "folder notes.txt does not exist")."""
    (tmp_path / "notes.txt").write_text("mine")
    path = tmp_path / "notes.txt" / below
    message = f"--output {path}: {tmp_path / 'notes.txt'} is a file, not a folder; choose another --output"
    with pytest.raises(HCGNetError) as e:
        check_output_folder(path, "the results")
    assert str(e.value) == message
    with pytest.raises(HCGNetError) as e:
        check_output_file(path, "--output")
    assert str(e.value) == message
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_output_inside_a_folder_read_is_refused(tmp_path):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    for inside in ("photos/out", "photos/cat", "photos"):
        with pytest.raises(HCGNetError, match="is inside .*photos, which this command reads images from"):
            check_output_folder(tmp_path / inside, "the results", reads=[None, tmp_path / "photos"])
    for beside in ("photos-out", "out/photos"):   # a name that starts alike, a folder of that name elsewhere
        assert check_output_folder(tmp_path / beside, "the results", reads=[tmp_path / "photos"])
    assert check_output_folder(tmp_path / "x", "the results", reads=[tmp_path / "gone"])   # not a folder: no check


def test_can_write_in(tmp_path):
    assert can_write_in(tmp_path)
    assert not can_write_in(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["attention.png", "report.JSON", "out/metrics.csv", "maps.npz"])
def test_check_output_folder_refuses_a_new_folder_named_like_a_file(tmp_path, name):
    with pytest.raises(HCGNetError) as e:
        check_output_folder(tmp_path / name, "the results")
    stem = name.rsplit(".", 1)[0]
    assert str(e.value) == (f"--output is a folder for the results, and {tmp_path / name} is named like a file; "
                            f"give a folder name (such as {tmp_path / stem})")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["run.v2", "results", "2026.12.06"])
def test_check_output_folder_takes_folder_names_with_dots(tmp_path, name):
    assert check_output_folder(tmp_path / name, "the results") == tmp_path / name
    (tmp_path / "old.png").mkdir()   # an existing folder is a folder, whatever its name
    assert check_output_folder(tmp_path / "old.png", "the results") == tmp_path / "old.png"


@pytest.mark.parametrize("paths, expected", [
    ([], []),
    (["shots/0.png"], ["0.png"]),
    (["d/cls0/0.png", "d/cls1/0.png", "d/cls1/1.png"], ["cls0/0.png", "cls1/0.png", "cls1/1.png"]),
    (["d/a/0.png", "d/b/1.png"], ["0.png", "1.png"]),                 # no clash: the file names alone
    (["d/x/0.png", "d/x/0.png"], ["0.png", "0.png"]),                 # the same file twice: one label
    (["x/0.png", "0.png", "y/x/0.png"], ["x/0.png", "0.png", "y/x/0.png"]),
    (["/a/b/c.jpg", "/z/b/c.jpg"], ["a/b/c.jpg", "z/b/c.jpg"]),
])
def test_distinct_names_add_as_many_folders_to_all_as_file_names_need(paths, expected):
    assert distinct_names(paths) == expected

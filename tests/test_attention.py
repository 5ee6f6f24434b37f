"""``hcgnet.analysis.attention`` and ``hcgnet attention``: the gates' attention maps read through hooks are the
softmax over positions the gates pool with, the branch weights are the proportions the update gate fuses
with, collecting changes nothing, and the pictures and files come out with the expected shapes."""
import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import cli, picture
import hcgnet
from hcgnet.analysis.attention import MAP_KINDS, default_modules, gate_maps, summary, upsample_map
from hcgnet.analysis.attention_plots import CELL_HEIGHT, CELL_WIDTH, attention_grid, weights_plot
from hcgnet.data import DataConfig
from hcgnet.errors import HCGNetError

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = "HCGNet-(1,1,1)-(k=4,4,4)"
PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "cifar_A1.official.pth.tar"
#: Every SMG module of SPEC and its spatial size for a 24 x 24 input (CIFAR stem: stride 1, then /2 per
#: transition), from the architecture, not from the code under test.
SIZES_24 = {"stages.0.block.layers.0": 24, "stages.1.transition": 12, "stages.1.block.layers.0": 12,
            "stages.2.transition": 6, "stages.2.block.layers.0": 6}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = hcgnet.create_model(SPEC, num_classes=3).eval()
    # Gates that do not sit at their initial, nearly uniform point: random BN statistics and score biases.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 24, 24)


def test_maps_are_probability_maps_at_each_modules_size(model, images):
    result = gate_maps(model, images, list(SIZES_24))
    assert list(result["maps"]) == list(SIZES_24)
    for name, side in SIZES_24.items():
        assert set(result["maps"][name]) == set(MAP_KINDS)
        for kind, m in result["maps"][name].items():
            assert m.shape == (2, side, side), (name, kind)
            assert m.min() >= 0
            torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(2), atol=1e-5, rtol=0)
            # Not a constant map: the two images (and the positions) differ.
            assert m.std() > 0


def _record(module, store, key, what="output"):
    def hook(_m, inputs, output):
        store[key] = (inputs[0] if what == "input" else output).detach().double()
    return module.register_forward_hook(hook)


def test_maps_are_the_softmax_the_gates_pooled_with(model, images):
    """Independently of the code under test: the scoring convs' logits (the conv applied to the pool's recorded
    input, in float64) give the softmax by hand, and each gate's pooled context is that map's weighted average of
    the gate's input."""
    name = "stages.1.block.layers.0"
    smg = dict(model.named_modules())[name]
    pools = {"update_3x3": smg.update_gate.context_a, "update_dilated": smg.update_gate.context_b,
             "forget": smg.forget_gate.context}
    seen, handles = {}, []
    for kind, pool in pools.items():
        handles += [_record(pool, seen, kind + ":x", "input"), _record(pool, seen, kind + ":z")]
    try:
        maps = gate_maps(model, images, [name])["maps"][name]
    finally:
        for h in handles:
            h.remove()
    for kind in MAP_KINDS:
        score = pools[kind].score
        logits = torch.nn.functional.conv2d(seen[kind + ":x"], score.weight.double(), score.bias.double()).flatten(1)
        by_hand = torch.exp(logits - logits.max(1, keepdim=True).values)
        by_hand = (by_hand / by_hand.sum(1, keepdim=True)).reshape(2, 12, 12)
        torch.testing.assert_close(maps[kind].double(), by_hand, atol=1e-6, rtol=1e-4)
        x = seen[kind + ":x"]
        pooled = (x * maps[kind].double()[:, None]).sum(dim=(2, 3))
        torch.testing.assert_close(pooled, seen[kind + ":z"], atol=1e-5, rtol=1e-4)



@contextlib.contextmanager
def planted_spot(model, name, row, col):
    """SMG module ``name``'s squeezed map is 1 at (row, col) and 0 elsewhere, and its forget gate's score reads
    that map steeply: the forget gate's attention must peak at exactly that cell."""
    smg = dict(model.named_modules())[name]

    def spot(_m, _inputs, output):
        out = torch.zeros_like(output)
        out[:, :, row, col] = 1.0
        return out
    handle = smg.squeeze.register_forward_hook(spot)
    with torch.no_grad():
        smg.forget_gate.context.score.weight.fill_(10.0)
        smg.forget_gate.context.score.bias.zero_()
    try:
        yield
    finally:
        handle.remove()


def test_planted_score_gives_the_peak_where_it_was_planted(images):
    """The forget gate's input (the squeezed map) replaced by a single bright spot (a hook on the squeeze
    cell) and its scoring conv planted to read it (weights 10, bias 0): its logits are 40 at the spot and 0
    elsewhere, so the map must peak there with almost all of the probability."""
    torch.manual_seed(0)
    m = hcgnet.create_model(SPEC, num_classes=3).eval()
    name, row, col = "stages.0.block.layers.0", 5, 17
    with planted_spot(m, name, row, col):
        forget = gate_maps(m, images, [name])["maps"][name]["forget"]
    for i in range(2):
        flat = int(forget[i].flatten().argmax())
        assert (flat // 24, flat % 24) == (row, col)
        assert forget[i, row, col] > 0.99


def test_summary_gives_the_peak_as_row_then_column(images):
    """A spot planted as above at (row 3, column 21) of a 20 x 28 map (not square, so a transposed or
    mis-divided index shows): summary.json's peak is that row and that column."""
    torch.manual_seed(0)
    m = hcgnet.create_model(SPEC, num_classes=3).eval()
    name, row, col = "stages.0.block.layers.0", 3, 21
    with planted_spot(m, name, row, col):
        result = gate_maps(m, torch.randn(2, 3, 20, 28), [name])
    info = summary(result, ["a.png", "b.png"])
    assert info["modules"][name]["map_size"] == [20, 28]
    for entry in info["modules"][name]["per_image"]:
        assert (entry["forget"]["peak_row"], entry["forget"]["peak_col"]) == (row, col)
        assert entry["forget"]["peak_probability"] > 0.99


def test_summary_gives_the_prediction_and_each_peak_against_uniform(model, images):
    """Beside the maps, the model's own answer (its logits, run again here) and the peak as the picture's corner
    gives it: peak probability times the map's h * w cells (1.0 would be a uniform map)."""
    name = "stages.1.transition"
    result = gate_maps(model, images, [name])
    with torch.no_grad():
        probabilities = torch.softmax(model(images), dim=1)
    info = summary(result, ["a.png", "b.png"], ["cat", "dog", "owl"])
    for i, predicted in enumerate(info["predictions"]):
        index = int(probabilities[i].argmax())
        assert predicted == {"class": index, "name": ["cat", "dog", "owl"][index],
                             "probability": pytest.approx(float(probabilities[i, index]), abs=1e-5)}
        for kind in MAP_KINDS:
            entry = info["modules"][name]["per_image"][i][kind]
            assert entry["peak_vs_uniform"] == pytest.approx(entry["peak_probability"] * 12 * 12, abs=2e-3)
            assert entry["peak_vs_uniform"] >= 1   # no map's peak is below its mean
    assert "name" not in summary(result, ["a.png", "b.png"])["predictions"][0]   # no names: indices only


def receptive_centre(convs: int, size: int, cell: int) -> float:
    """Where a cell of a chain of ``convs`` 3x3 convs of stride 2 and padding 1 (HCGNet's transitions; its
    ImageNet stem's conv and max-pool have the same geometry) looks: the middle of the pixels its value depends
    on, found by back-propagating from that cell of a chain of all-ones convs (an oracle independent of
    upsample_map)."""
    chain = nn.Sequential(*[nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False) for _ in range(convs)])
    for conv in chain:
        nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, size, size, requires_grad=True)
    chain(x)[0, 0, cell, cell].backward()
    seen = x.grad[0, 0].sum(1).nonzero()  # the rows it depends on (columns alike)
    return (float(seen.min()) + float(seen.max())) / 2


@pytest.mark.parametrize("convs, size, cell", [(1, 24, 5), (2, 24, 2), (5, 224, 3), (5, 224, 2)])
def test_overlay_puts_a_planted_spot_where_its_cell_looks(convs, size, cell):
    cells = size // 2 ** convs
    spot = torch.zeros(cells, cells)
    spot[cell, cell] = 1.0
    up = upsample_map(spot, (size, size))
    centre = receptive_centre(convs, size, cell)
    assert centre == 2 ** convs * cell  # the geometry: cell i of stride s looks at pixel s i
    flat = int(up.argmax())
    assert (flat // size, flat % size) == (centre, centre)
    assert float(up[int(centre), int(centre)]) == 1.0  # the cell's own value, not a blend
    # and falls off symmetrically around it, to 0 one stride away
    s = 2 ** convs
    for k in range(1, s):
        assert float(up[int(centre) - k, int(centre)]) == pytest.approx(float(up[int(centre) + k, int(centre)]))
    assert float(up[int(centre) + s, int(centre)]) == 0.0


def test_overlay_of_an_odd_sized_image_keeps_every_cells_value():
    # 26 px at stride 4 gives 7 cells (26 -> 13 -> 7): cells at 0, 4, ..., 24; the last 2 px hold the edge value
    m = torch.arange(7.0).view(1, 7).expand(3, 7)
    up = upsample_map(m, (10, 26))
    assert up.shape == (10, 26)
    assert [float(up[0, 4 * i]) for i in range(7)] == [float(i) for i in range(7)]
    assert float(up[0, 2]) == 0.5 and float(up[0, 25]) == 6.0


def test_branch_weights_are_the_proportions_the_update_gate_fused_with(model, images):
    name = "stages.2.block.layers.0"
    gate = dict(model.named_modules())[name].update_gate
    seen = {}
    handles = [_record(gate.context_a, seen, "za"), _record(gate.context_b, seen, "zb"), _record(gate, seen, "v")]
    try:
        result = gate_maps(model, images, [name])
    finally:
        for h in handles:
            h.remove()
    u = result["weights"][name]["update"]
    f = result["weights"][name]["forget"]
    assert u.shape == (2, 2, 4) and f.shape == (2, 4)
    torch.testing.assert_close(u.sum(1), torch.ones(2, 4), atol=1e-6, rtol=0)
    assert ((u > 0) & (u < 1)).all() and ((f > 0) & (f < 1)).all()
    v = u[:, 0].double() * seen["za"] + u[:, 1].double() * seen["zb"]
    torch.testing.assert_close(v, seen["v"][:, :, 0, 0], atol=1e-5, rtol=1e-4)


def test_collecting_changes_nothing(images):
    torch.manual_seed(0)
    m = hcgnet.create_model(SPEC, num_classes=3).train()
    m.eval()
    with torch.no_grad():
        before = m(images)
    m.train()
    result = gate_maps(m, images, list(SIZES_24))
    assert m.training  # mode restored
    torch.testing.assert_close(result["logits"], before, atol=0, rtol=0)
    assert not any(mod._forward_hooks for mod in m.modules())
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(images), before, atol=0, rtol=0)


def test_gate_maps_runs_in_eval_mode_and_leaves_an_eval_model_in_eval_mode(images):
    torch.manual_seed(0)
    m = hcgnet.create_model(SPEC, num_classes=3).eval()
    seen = []
    handle = m.register_forward_hook(lambda module, inputs, output: seen.append(module.training))
    try:
        gate_maps(m, images)
        m.train()
        gate_maps(m, images)
    finally:
        handle.remove()
    assert seen == [False, False]  # both forward passes in eval mode
    assert m.training and all(mod.training for mod in m.modules())  # the train-mode model restored
    m.eval()
    gate_maps(m, images)
    assert not any(mod.training for mod in m.modules())  # and the eval-mode one left in eval mode


def test_a_batch_of_one_works_on_a_model_in_training_mode(images):
    m = hcgnet.create_model(SPEC, num_classes=3).train()
    result = gate_maps(m, images[:1])
    assert list(result["maps"]) == ["stages.0.block.layers.0", "stages.1.block.layers.0", "stages.2.block.layers.0"]
    assert result["maps"]["stages.2.block.layers.0"]["forget"].shape == (1, 6, 6)


def test_bf16_runs_the_gates_in_bfloat16_and_gives_nearly_the_same_maps(model, images):
    dtypes = []  # a convolution's output dtype: bfloat16 only if autocast ran the forward pass
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    handle = conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    try:
        fp32 = gate_maps(model, images, list(SIZES_24))
        bf16 = gate_maps(model, images, list(SIZES_24), amp_dtype=torch.bfloat16)
    finally:
        handle.remove()
    assert dtypes == [torch.float32, torch.bfloat16]
    for name in SIZES_24:
        for kind in MAP_KINDS:
            m = bf16["maps"][name][kind]
            assert m.dtype == torch.float32
            # bf16 keeps 8 bits: each map within a few percent of its peak, and still a probability map
            torch.testing.assert_close(m, fp32["maps"][name][kind], atol=0.03 * float(fp32["maps"][name][kind].max()),
                                       rtol=0)
            torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(2), atol=0.02, rtol=0)


def test_default_modules_are_the_last_of_each_hybrid_block():
    with torch.device("meta"):
        a1 = hcgnet.create_model("hcgnet_a1")
    assert default_modules(a1) == ["stages.0.block.layers.7", "stages.1.block.layers.7", "stages.2.block.layers.7"]


ALL_SMG = ("SMG modules of this model: stages.0.block.layers.0, stages.1.transition, stages.1.block.layers.0, "
           "stages.2.transition, stages.2.block.layers.0")


@pytest.mark.parametrize("name, expected", [
    # equally close names: difflib's order among ties
    ("stages.7.block.layers.0", "unknown module 'stages.7.block.layers.0' (did you mean stages.2.block.layers.0 or "
                                "stages.1.block.layers.0?); " + ALL_SMG),
    ("stages.9", "unknown module 'stages.9'; " + ALL_SMG),
    ("stages.1", "'stages.1' is a HCGStage, not an SMG module (it holds stages.1.transition, "
                 "stages.1.block.layers.0); " + ALL_SMG),
    ("stages.0.block.layers.0.squeeze", "'stages.0.block.layers.0.squeeze' is a SqueezeCell, not an SMG module "
                                        "(it lies inside stages.0.block.layers.0); " + ALL_SMG),
])
def test_wrong_module_names_are_one_line_errors(model, images, name, expected):
    """The message names every SMG module of the model, in order (not some close spellings as if they were all),
    and what the wrong name is near."""
    with pytest.raises(HCGNetError) as e:
        gate_maps(model, images, ["stages.0.block.layers.0", name])
    assert str(e.value) == expected


def test_a_wrong_module_name_lists_a_deep_models_modules_as_numbered_runs():
    with torch.device("meta"):
        a1 = hcgnet.create_model("hcgnet_a1")
    with pytest.raises(HCGNetError) as e:
        gate_maps(a1, torch.empty(1, 3, 32, 32, device="meta"), ["stages.0.block.layer.3"])
    assert str(e.value) == ("unknown module 'stages.0.block.layer.3' (did you mean stages.0.block.layers.3 or "
                            "stages.2.block.layers.3?); SMG modules of this model: stages.0.block.layers.0-7, "
                            "stages.1.transition, stages.1.block.layers.0-7, stages.2.transition, "
                            "stages.2.block.layers.0-7")


def test_a_model_without_gates_is_refused(images):
    with pytest.raises(HCGNetError, match="has no SMG modules"):
        gate_maps(nn.Sequential(nn.Conv2d(3, 2, 3)), images)


@pytest.mark.parametrize("switches, lacks", [
    ({"forget_gate": False}, "no forget gate (built with forget_gate=False)"),
    ({"update_gate": False}, "no update gate (built with update_gate=False)"),
    ({"connectivity": "dense"}, "no forget gate"),
])
def test_a_model_with_a_gate_switched_off_is_refused_in_one_line(images, switches, lacks):
    model = hcgnet.create_model(SPEC, num_classes=3, **switches).eval()
    with pytest.raises(HCGNetError, match="gate maps need both gates") as e:
        gate_maps(model, images)
    assert lacks in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ pictures


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_grid_has_one_row_per_image_and_one_column_per_map(model, images, tmp_path):
    one = gate_maps(model, images[:1], ["stages.1.transition"])
    two = gate_maps(model, images, ["stages.0.block.layers.0", "stages.2.block.layers.0"])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    w1, h1 = png_size(attention_grid(images[:1], one["maps"], tmp_path / "one.png", mean, std))
    w2, h2 = png_size(attention_grid(images, two["maps"], tmp_path / "two.png", mean, std, names=["a", "b"]))
    # Columns: the image, then 3 maps per module: 4 and 7. Rows: 1 and 2.
    assert w2 / w1 == pytest.approx(7 / 4, rel=0.01)
    assert h2 / h1 == pytest.approx(2, rel=0.01)
    assert w1 / h1 == pytest.approx(4 * CELL_WIDTH / CELL_HEIGHT, rel=0.01)
    # The grid is not blank: overlays in colour.
    pixels = np.asarray(Image.open(tmp_path / "two.png").convert("RGB"), dtype=np.int16)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 50


def test_grid_shows_the_images_unnormalised(model, tmp_path):
    """A flat (0.8, 0.2, 0.3) picture, normalised as the model sees it, shows in its own colours in the
    first column (the middle of the first picture)."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    colour = torch.tensor([0.8, 0.2, 0.3])
    x = ((colour - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1).expand(1, 3, 24, 24).clone()
    result = gate_maps(model, x, ["stages.2.block.layers.0"])
    path = attention_grid(x, result["maps"], tmp_path / "flat.png", mean, std)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    middle = pixels[pixels.shape[0] // 2, int(CELL_WIDTH * 100 / 2)]
    np.testing.assert_allclose(middle, [204, 51, 76], atol=3)


def test_grayscale_images(tmp_path):
    torch.manual_seed(0)
    m = hcgnet.create_model(SPEC, num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 16, 16)
    result = gate_maps(m, x, ["stages.1.transition"])
    assert result["maps"]["stages.1.transition"]["forget"].shape == (2, 8, 8)
    w, h = png_size(attention_grid(x, result["maps"], tmp_path / "gray.png", (0.5,), (0.25,)))
    assert w / h == pytest.approx(4 * CELL_WIDTH / (2 * CELL_HEIGHT), rel=0.01)


def test_weights_plot_has_a_row_per_module(model, images, tmp_path):
    one = gate_maps(model, images, ["stages.1.transition"])
    three = gate_maps(model, images)
    w1, h1 = png_size(weights_plot(one["weights"], tmp_path / "w1.png"))
    w3, h3 = png_size(weights_plot(three["weights"], tmp_path / "w3.png"))
    assert w1 == w3 and h3 == pytest.approx(3 * h1, rel=0.01)


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    m = hcgnet.create_model(SPEC, num_classes=3).eval()
    config = DataConfig(name="imagefolder", input_size=(3, 16, 16), mean=(0.6, 0.5, 0.4), std=(0.2, 0.25, 0.3),
                        resize=18, class_names=["a", "b", "c"])
    path = base / "best.pt"
    torch.save({"model": m.state_dict(), "model_name": SPEC, "num_classes": "3", "in_chans": "3",
                "data_config": json.dumps(dataclasses.asdict(config))}, path)
    return path


def test_cli_writes_the_pictures_maps_and_summary(capsys, checkpoint, tmp_path):
    for i in range(3):
        picture(tmp_path / "shots" / f"{i}.png", i, size=(20, 26))
    (tmp_path / "shots" / "broken.png").write_bytes(b"not a png")
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "attention", "--checkpoint", checkpoint, tmp_path / "shots", "--output", out_dir,
                         "--modules", "stages.1.transition", "stages.2.block.layers.0", "--device", "cpu")
    assert code == 0, err
    assert "broken.png" in err and "skipped" in err
    for name in ("attention.png", "weights.png", "maps.npz", "summary.json"):
        assert f"wrote {out_dir / name}" in out
    with np.load(out_dir / "maps.npz") as npz:  # no pickles
        assert [Path(p).name for p in npz["images"]] == ["0.png", "1.png", "2.png"]
        assert npz["stages.1.transition/forget"].shape == (3, 8, 8)          # 16 px input, /2
        assert npz["stages.2.block.layers.0/update_dilated"].shape == (3, 4, 4)
        assert npz["stages.2.block.layers.0/update_weights"].shape == (3, 2, 4)
        np.testing.assert_allclose(npz["stages.1.transition/update_3x3"].sum(axis=(1, 2)), 1, atol=1e-5)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["modules"]["stages.2.block.layers.0"]["map_size"] == [4, 4]
    assert summary["checkpoint"] == str(checkpoint) and summary["amp"] == "none"
    assert summary["provenance"]["checkpoints"][0]["sha256"] == hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    w, h = png_size(out_dir / "attention.png")
    assert w / h == pytest.approx((1 + 6) * CELL_WIDTH / (3 * CELL_HEIGHT), rel=0.01)
    assert "stages.1.transition" in out and "8x8" in out  # the table
    with torch.no_grad():   # the checkpoint's model, run here on the images as the command reads them
        model = hcgnet.create_model(SPEC, num_classes=3).eval()
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        transform = hcgnet.data.build_eval_transform(DataConfig.from_dict(json.loads(
            torch.load(checkpoint, weights_only=True)["data_config"])))
        x = torch.stack([transform(Image.open(tmp_path / "shots" / f"{i}.png").convert("RGB")) for i in range(3)])
        predicted = model(x).argmax(dim=1).tolist()
    assert [p["name"] for p in summary["predictions"]] == [["a", "b", "c"][k] for k in predicted]
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[1:4]] == [[f"{i}.png", ["a", "b", "c"][k]] for i, k in
                                                         enumerate(predicted)]


def test_an_output_inside_a_folder_of_the_images_is_refused(capsys, checkpoint, tmp_path):
    """attention.png inside the folder looked at would be looked at next time: refused before any work."""
    picture(tmp_path / "shots" / "0.png", 0, size=(20, 26))
    code, out, err = cli(capsys, "attention", "--checkpoint", checkpoint, tmp_path / "shots", "--output",
                         tmp_path / "shots" / "att")
    assert code == 2 and f"is inside {tmp_path / 'shots'}, which this command reads images from" in err
    assert not (tmp_path / "shots" / "att").exists()


def test_cli_labels_images_of_the_same_name_by_their_folders(capsys, checkpoint, tmp_path, monkeypatch):
    """Two folders with the same file names (a class per folder): the table and the grid's row titles say
    ``cat/0.png`` and ``dog/0.png``, not ``0.png`` twice, and ``dog/1.png`` too: every label names its folder."""
    import matplotlib.axes

    for i, folder in enumerate(("cat", "dog")):
        picture(tmp_path / "shots" / folder / "0.png", i, size=(20, 26))
    picture(tmp_path / "shots" / "dog" / "1.png", 2, size=(20, 26))
    titles = []
    set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **k: (titles.append(text),
                                                                                     set_title(ax, text, *a, **k))[1])
    code, out, err = cli(capsys, "attention", "--checkpoint", checkpoint, tmp_path / "shots", "--output",
                         tmp_path / "out", "--modules", "stages.2.transition")
    assert code == 0, err
    rows = [line.split()[2] for line in out.splitlines() if line.startswith("stages.2.transition")]
    assert rows == ["cat/0.png", "dog/0.png", "dog/1.png"]
    assert titles[0:12:4] == ["cat/0.png", "dog/0.png", "dog/1.png"]   # the image column; then the 3 maps


def test_cli_refuses_to_replace_earlier_results_without_force(capsys, checkpoint, tmp_path):
    picture(tmp_path / "a.png", 0, size=(20, 26))
    out = tmp_path / "new" / "out"  # missing parents are made
    argv = ["attention", "--checkpoint", checkpoint, tmp_path / "a.png", "--output", out, "--modules",
            "stages.2.transition"]
    code, text, err = cli(capsys, *argv)
    assert code == 0, err
    before = {n: (out / n).read_bytes() for n in ("attention.png", "weights.png", "maps.npz", "summary.json")}
    picture(tmp_path / "b.png", 1, size=(20, 26))
    argv[3] = tmp_path / "b.png"
    code, text, err = cli(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1
    assert "already holds attention.png, weights.png, maps.npz, summary.json" in err and "--force" in err
    assert {n: (out / n).read_bytes() for n in before} == before
    code, text, err = cli(capsys, *argv, "--force")
    assert code == 0, err
    assert f"wrote {out / 'summary.json'}" in text
    assert [Path(p["image"]).name for p in json.loads((out / "summary.json").read_text())["modules"][
        "stages.2.transition"]["per_image"]] == ["b.png"]


def test_cli_on_the_published_checkpoint(capsys, tmp_path):
    picture(tmp_path / "cat.png", 0, size=(32, 32))
    code, out, err = cli(capsys, "attention", "--checkpoint", PUBLISHED, "--model", "hcgnet_a1", tmp_path / "cat.png",
                         "--output", tmp_path / "out", "--modules", "stages.2.block.layers.7", "--device", "cpu")
    assert code == 0, err
    assert "carries no" in err  # the standard CIFAR preprocessing is used, and said so
    with np.load(tmp_path / "out" / "maps.npz") as npz:
        assert npz["stages.2.block.layers.7/forget"].shape == (1, 8, 8)


def test_input_size_of_a_checkpoint_without_preprocessing_comes_from_the_model(capsys, tmp_path):
    """No preprocessing in the checkpoint: the size is the model's (its pretrained_cfg, as timm's
    resolve_data_config reads it): 32 px for the CIFAR stem, 224 for the ImageNet stem, whatever the picture's."""
    picture(tmp_path / "wide.png", 0, size=(48, 40))
    code, out, err = cli(capsys, "attention", "--checkpoint", PUBLISHED, "--model", "hcgnet_a1", tmp_path / "wide.png",
                         "--output", tmp_path / "cifar", "--modules", "stages.0.block.layers.0",
                         "stages.2.block.layers.7", "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "cifar" / "maps.npz") as npz:
        assert npz["stages.0.block.layers.0/forget"].shape == (1, 32, 32)  # CIFAR stem: stride 1
        assert npz["stages.2.block.layers.7/forget"].shape == (1, 8, 8)
    torch.manual_seed(0)
    spec = "HCGNet-(1,1,1,1)-(k=4,4,4,4)"  # four blocks: the ImageNet stem
    path = tmp_path / "imagenet.pt"
    torch.save({"model": hcgnet.create_model(spec).state_dict(), "model_name": spec}, path)
    code, out, err = cli(capsys, "attention", "--checkpoint", path, tmp_path / "wide.png", "--output",
                         tmp_path / "imagenet", "--modules", "stages.0.block.layers.0", "stages.3.block.layers.0",
                         "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "imagenet" / "maps.npz") as npz:
        assert npz["stages.0.block.layers.0/forget"].shape == (1, 56, 56)  # 224 / 4 (stem)
        assert npz["stages.3.block.layers.0/forget"].shape == (1, 7, 7)    # 224 / 32


def test_cli_max_images_keeps_the_first_readable_ones(capsys, checkpoint, tmp_path):
    picture(tmp_path / "shots" / "0.png", 0, size=(20, 26))
    (tmp_path / "shots" / "1.png").write_bytes(b"broken")
    for i in (2, 3, 4):
        picture(tmp_path / "shots" / f"{i}.png", i, size=(20, 26))
    code, out, err = cli(capsys, "attention", "--checkpoint", checkpoint, tmp_path / "shots", "--output",
                         tmp_path / "out", "--max-images", "3", "--modules", "stages.2.transition")
    assert code == 0, err
    assert "showing 3 of 5 images, the first in name order (--max-images 3)" in err
    with np.load(tmp_path / "out" / "maps.npz") as npz:
        assert [Path(p).name for p in npz["images"]] == ["0.png", "2.png", "3.png"]


def test_cli_max_images_takes_class_folders_in_turn(capsys, checkpoint, tmp_path):
    """A folder of class folders with more images than --max-images: one from each class in turn, so every
    class is in the grid (in name order each, read past an unreadable one); a class with fewer images drops out
    of the turn once it has none left."""
    for cls, count in (("cat", 4), ("dog", 1), ("eel", 3)):
        for i in range(count):
            picture(tmp_path / "shots" / cls / f"{i}.png", i, size=(20, 26))
    (tmp_path / "shots" / "eel" / "0.png").write_bytes(b"broken")
    code, out, err = cli(capsys, "attention", "--checkpoint", checkpoint, tmp_path / "shots", "--output",
                         tmp_path / "out", "--max-images", "5", "--modules", "stages.2.transition")
    assert code == 0, err
    assert "showing 5 of 8 images, taken in turn from each of 3 folders (--max-images 5)" in err
    with np.load(tmp_path / "out" / "maps.npz") as npz:
        shown = [Path(p).relative_to(tmp_path / "shots").as_posix() for p in npz["images"]]
    assert shown == ["cat/0.png", "dog/0.png", "cat/1.png", "eel/1.png", "cat/2.png"]


def test_cli_batches_give_the_maps_of_one_pass_and_progress_lines(capsys, checkpoint, tmp_path, monkeypatch):
    import hcgnet.analysis.options as options

    for i in range(3):
        picture(tmp_path / "shots" / f"{i}.png", i, size=(20, 26))
    (tmp_path / "shots" / "1b.png").write_bytes(b"broken")  # between two batches' images
    monkeypatch.setattr(options, "LOG_EVERY_S", 0.0)      # a line per update, to count them
    arrays = {}
    for batch in (1, 8):
        out = tmp_path / f"out{batch}"
        code, text, err = cli(capsys, "attention", "--checkpoint", checkpoint, tmp_path / "shots", "--output", out,
                              "--batch-size", batch, "--device", "cpu")
        assert code == 0, err
        # stderr is no terminal here: progress lines, not a bar; one per batch but the last (files tried)
        progress = [line for line in err.splitlines() if line.startswith("attention: ")]
        assert [line.split(",")[0] for line in progress] == (
            ["attention: 1/4 images", "attention: 2/4 images", "attention: 3/4 images"] if batch == 1 else [])
        with np.load(out / "maps.npz") as npz:
            arrays[batch] = {k: npz[k] for k in npz.files}
    assert [Path(p).name for p in arrays[1]["images"]] == ["0.png", "1.png", "2.png"]
    for key, value in arrays[8].items():
        if key != "images":
            np.testing.assert_allclose(arrays[1][key], value, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case, expected", [
    ("no_images", "hcgnet: error: no images to look at: no such file or folder"),
    ("empty_folder", "hcgnet: error: no images to look at: no images in"),
    ("unknown_module", "hcgnet: error: unknown module 'stages.9'; SMG modules of this model: stages.0.block.layers.0, "
                       "stages.1.transition"),
    ("output_is_a_file", "is a file; give a folder"),
    ("unreadable_only", "hcgnet: error: none of the 1 images could be read"),
    ("max_images", "hcgnet: error: --max-images must be 1 or more, got 0"),
    ("batch_size", "hcgnet: error: --batch-size must be 1 or more, got 0"),
    ("fp16_on_cpu", "hcgnet: error: --amp fp16 needs a GPU; on the CPU use --amp bf16"),
    ("checkpoint_folder", "is a folder, not a checkpoint file; e.g. --checkpoint"),
    ("images_after_modules", "required: IMAGE|FOLDER|GLOB; give image files, folders or quoted globs before "
                             "--modules, which takes every name after it"),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, checkpoint, tmp_path, case, expected):
    shot = picture(tmp_path / "a.png", 0, size=(20, 26))
    images, output, extra = [shot], tmp_path / "out", []
    if case == "no_images":
        images = [tmp_path / "missing.png"]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        images = [tmp_path / "empty"]
    elif case == "unknown_module":
        extra = ["--modules", "stages.9"]
    elif case == "output_is_a_file":
        output = shot
    elif case == "unreadable_only":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"nope")
        images = [bad]
    elif case == "max_images":
        extra = ["--max-images", "0"]
    elif case == "batch_size":
        extra = ["--batch-size", "0"]
    elif case == "fp16_on_cpu":
        extra = ["--amp", "fp16", "--device", "cpu"]
    elif case == "checkpoint_folder":
        checkpoint = checkpoint.parent
    elif case == "images_after_modules":  # --modules takes the images too: argparse finds none
        images, extra = [], ["--modules", "stages.1.transition", shot]
    try:
        code, out, err = cli(capsys, "attention", "--checkpoint", checkpoint, *images, "--output", output, *extra)
    except SystemExit as e:  # argparse's way out
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("hcgnet: error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    if case != "output_is_a_file":
        assert not output.exists()  # nothing created for a run that could not start


def test_the_readme_example_runs_as_written(tmp_path):
    """The README's first attention example, pasted into a shell in a clone: it draws its own pictures."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("### hcgnet attention"):]
    block = section[section.index("```bash\n") + len("```bash\n"):section.index("```\n", section.index("```bash"))]
    lines = block.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("hcgnet attention"))
    (tmp_path / "tests").symlink_to(root / "tests")               # the clone's checkpoint, at the same path
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-euc", "\n".join(lines[:first + 1]) + " --device cpu"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "att" / "summary.json").read_text())
    assert sorted(Path(name).name for name in summary["images"]) == ["red-disc.png", "white-square.png"]
    assert Image.open(tmp_path / "shapes" / "red-disc.png").size == (32, 32)

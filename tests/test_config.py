"""Training configuration: the paper's recipes (settings and the SGDR learning rate of every epoch), the
precedence defaults < recipe < YAML file < explicit overrides, one-line ConfigErrors, and ``hcgnet train``
refusing bad input with exit code 2 and one stderr line."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import hcgnet
from hcgnet.cli import main
from hcgnet.training import ConfigError, TrainConfig, list_recipes, make_config
from hcgnet.training.schedule import EpochSchedule

PAPER_RECIPES = ["cifar10-a1", "cifar10-a2", "cifar10-a3", "cifar100-a1", "cifar100-a2", "cifar100-a3",
                 "imagenet-b", "imagenet-c", "fashion-mnist-a1"]
CIFAR_RECIPES = [r for r in PAPER_RECIPES if r.startswith("cifar")]
PUBLISHED_RECIPES = [r + "-published" for r in CIFAR_RECIPES]  # the paper's plus the published code's DropBlock
IMAGENET_RECIPES = ["imagenet-b", "imagenet-c"]

# The paper's schedules (shared/reference/README.md, "Training recipes in the paper"): SGDR, lr 0.1, T0 = 10,
# Tmul = 2. recipe -> (total epochs, length of one run of the schedule, number of cycles in a run).
T0, TMUL, LR0 = 10, 2, 0.1
SCHEDULES = {
    "cifar10-a1": (1270, 1270, 7),     # 10+20+40+80+160+320+640
    "cifar100-a1": (1270, 1270, 7),
    "cifar10-a2": (1260, 630, 6),      # two runs of 630 = 10+...+320, restarting at epoch 630
    "cifar10-a3": (1260, 630, 6),
    "cifar100-a2": (1260, 630, 6),
    "cifar100-a3": (1260, 630, 6),
    "imagenet-b": (630, 630, 6),
    "imagenet-c": (630, 630, 6),
    "fashion-mnist-a1": (70, 70, 3),   # the CIFAR recipe shortened to 3 cycles
}


def recipe_config(name, **overrides):
    if name.startswith("imagenet"):  # the ImageNet recipes name no dataset; make_config requires one
        overrides.setdefault("data", "imagefolder:x")
    return make_config(recipe=name, overrides=overrides)


def sgdr_lr(epoch, run_length, cycles, lr0=LR0, t0=T0, tmul=TMUL):
    """Closed form of SGDR (lr_min 0), independent of timm: within run r = epoch mod run_length, cycle i
    starts at S_i = T0 (Tmul^i - 1) / (Tmul - 1) and lasts T_i = T0 Tmul^i."""
    r = math.fmod(epoch, run_length)
    i = 0
    while not (t0 * (tmul ** i - 1) / (tmul - 1) <= r < t0 * (tmul ** (i + 1) - 1) / (tmul - 1)):
        i += 1
    assert i < cycles, f"epoch {epoch} is past the schedule's {cycles} cycles"
    s_i = t0 * (tmul ** i - 1) / (tmul - 1)
    t_i = t0 * tmul ** i
    return 0.5 * lr0 * (1 + math.cos(math.pi * (r - s_i) / t_i))


def schedule_for(config):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    return EpochSchedule(opt, config)


# ------------------------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_runs_cover_whole_sgdr_cycles(name):
    epochs, run_length, cycles = SCHEDULES[name]
    c = recipe_config(name)
    assert c.epochs == epochs
    assert (c.restart_every or c.epochs) == run_length
    # the cycles 10, 20, 40, ... of one run add up to exactly the run: it ends at the bottom of a cycle
    assert T0 * (TMUL ** cycles - 1) // (TMUL - 1) == run_length


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_lr_of_every_epoch_is_the_sgdr_closed_form(name):
    epochs, run_length, cycles = SCHEDULES[name]
    config = recipe_config(name)
    schedule = schedule_for(config)
    got = np.array([schedule.step(e) for e in range(epochs)])
    want = np.array([sgdr_lr(e, run_length, cycles) for e in range(epochs)])
    bad = np.flatnonzero(np.abs(got - want) > 1e-9)
    assert bad.size == 0, f"epoch {bad[0]}: lr {got[bad[0]]} != {want[bad[0]]}"
    # every restart (start of a cycle, and of each run) is back at the full learning rate
    starts = [k * run_length + T0 * (TMUL ** i - 1) for k in range(epochs // run_length) for i in range(cycles)]
    assert np.allclose(got[starts], LR0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,fractional", [
    ("cifar10-a1", [0.5, 5.25, 9.999, 10.5, 29.75, 629.5, 630.5, 1000.3, 1269.9]),
    ("cifar10-a2", [0.5, 9.75, 10.1, 319.2, 629.5, 630.25, 640.5, 1000.3, 1259.9]),
    ("cifar100-a3", [3.3, 69.9, 70.01, 631.7, 1259.99]),
    ("imagenet-b", [0.125, 150.5, 310.001, 629.9]),
])
def test_mid_epoch_steps_follow_the_closed_form(name, fractional):
    _, run_length, cycles = SCHEDULES[name]
    schedule = schedule_for(recipe_config(name))
    for e in fractional:
        assert schedule.step(e) == pytest.approx(sgdr_lr(e, run_length, cycles), abs=1e-9), e


def test_a2_restarts_at_epoch_630():
    schedule = schedule_for(recipe_config("cifar10-a2"))
    assert schedule.step(629.99) < 1e-6
    assert schedule.step(629.99) > 0
    assert schedule.step(630) == pytest.approx(0.1, abs=1e-12)
    assert schedule.step(635) == pytest.approx(schedule_for(recipe_config("cifar10-a2")).step(5), abs=1e-12)


def test_a1_and_a2_part_ways_after_epoch_630():
    schedule = schedule_for(recipe_config("cifar10-a1"))
    # epoch 630 starts A1's 7th cycle (640 epochs), so one epoch later A1 is 1/640 of the way down; A2 starts
    # its second run, whose first cycle is 10 epochs long
    assert schedule.step(631) == pytest.approx(0.05 * (1 + math.cos(math.pi / 640)), abs=1e-12)
    a2 = schedule_for(recipe_config("cifar10-a2"))
    assert a2.step(631) == pytest.approx(0.05 * (1 + math.cos(math.pi / 10)), abs=1e-12)


# ------------------------------------------------------------------------------------------ recipes


def test_list_recipes_has_every_paper_recipe():
    names = list_recipes()
    assert set(PAPER_RECIPES) <= set(names)
    assert names == sorted(names)
    extra = set(names) - set(PAPER_RECIPES) - set(PUBLISHED_RECIPES)
    assert extra == {"demo", "finetune"}, f"unexpected recipes {extra}"


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_every_recipe_uses_sgd_nesterov_momentum_and_sgdr(name):
    c = recipe_config(name)
    assert c.momentum == 0.9
    assert c.nesterov is True
    assert c.sched == "cosine"
    assert (c.cycle_epochs, c.cycle_mul) == (T0, TMUL)
    assert c.cycle_limit == SCHEDULES[name][2]
    assert c.lr == 0.1
    assert c.warmup_epochs == 0 and c.min_lr == 0
    assert c.recipe == name


@pytest.mark.parametrize("name", CIFAR_RECIPES)
def test_cifar_recipes_have_the_papers_settings(name):
    c = recipe_config(name)
    dataset, arch = name.split("-")
    assert c.data == dataset
    assert c.model == "hcgnet_" + arch
    assert c.batch_size == 128
    assert c.weight_decay == 1e-4
    assert c.mixup == 1.0
    assert c.label_smoothing == 0
    assert c.lr_base_batch is None  # lr 0.1 at batch 128, not rescaled


@pytest.mark.parametrize("name", PUBLISHED_RECIPES)
def test_published_recipes_are_the_papers_plus_dropblock(name):
    paper = recipe_config(name[: -len("-published")]).to_dict()
    published = recipe_config(name).to_dict()
    assert published.pop("drop_block") == 0.1 and paper.pop("drop_block") == 0
    assert published.pop("recipe") == name
    paper.pop("recipe")
    assert published == paper


def test_finetune_recipe_is_short_gentle_and_needs_weights(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    c = make_config(recipe="finetune", overrides={"data": "imagefolder:x", "initial_checkpoint": str(weights)})
    paper = recipe_config("cifar10-a1")
    assert c.epochs <= 50 and c.lr <= paper.lr / 10
    assert c.mixup == 0 and c.warmup_epochs > 0 and c.sched == "cosine"
    assert c.val_size is None  # the hold-out adapts to the user's folder
    assert c.data == f"imagefolder:{os.path.abspath('x')}"  # recorded so that it is found from anywhere


@pytest.mark.parametrize("name", IMAGENET_RECIPES)
def test_imagenet_recipes_have_the_papers_settings(name):
    c = recipe_config(name)
    assert c.model == "hcgnet_" + name[-1]
    assert c.batch_size == 256
    assert c.lr_base_batch == 256
    assert c.weight_decay == 4e-5
    assert c.mixup == 0.4
    assert c.label_smoothing == 0.1
    assert c.drop_rate == 0.1
    assert c.image_size == 224
    assert c.epochs == 630


def test_imagenet_recipe_needs_a_dataset():
    with pytest.raises(ConfigError, match="--data"):
        make_config(recipe="imagenet-b")


# ------------------------------------------------------------------------------------------ precedence


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_apply_without_recipe_or_file():
    c = make_config(overrides={"data": "cifar10"})
    default = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.mixup) == (default.epochs, default.batch_size, default.lr, default.mixup)
    assert c.recipe is None


def test_recipe_overrides_defaults():
    c = make_config(recipe="cifar10-a1")
    assert c.epochs == 1270 and TrainConfig().epochs != 1270
    assert c.mixup == 1.0 and TrainConfig().mixup != 1.0


def test_file_overrides_recipe_and_flags_override_file(tmp_path):
    cfg = write(tmp_path / "c.yaml", "epochs: 3\nbatch_size: 64\nmixup: 0.5\n")
    c = make_config(recipe="cifar10-a1", config_file=cfg)
    assert (c.epochs, c.batch_size, c.mixup) == (3, 64, 0.5)  # file beats recipe
    assert c.weight_decay == 1e-4 and c.cycle_limit == 7      # the rest of the recipe stays
    c = make_config(recipe="cifar10-a1", config_file=cfg, overrides={"epochs": 5, "batch_size": None, "lr": 0.05})
    assert c.epochs == 5             # explicit beats file
    assert c.batch_size == 64        # None is ignored: the file's value stays
    assert c.lr == 0.05


def test_none_overrides_are_ignored():
    c = make_config(recipe="cifar100-a2", overrides={k: None for k in TrainConfig.__dataclass_fields__})
    assert c == make_config(recipe="cifar100-a2")


def test_config_file_can_name_a_recipe(tmp_path):
    cfg = write(tmp_path / "c.yaml", "recipe: cifar100-a2\nepochs: 7\n")
    c = make_config(config_file=cfg)
    assert c.recipe == "cifar100-a2"
    assert c.data == "cifar100" and c.model == "hcgnet_a2" and c.restart_every == 630  # from the recipe
    assert c.epochs == 7                                                                # the file wins
    c = make_config(config_file=cfg, overrides={"epochs": 9})
    assert c.epochs == 9


def test_yaml_values_are_coerced_to_the_option_type(tmp_path):
    c = make_config(config_file=write(tmp_path / "c.yaml", "data: cifar10\nepochs: '12'\nlr: 1\n"))
    assert c.epochs == 12 and isinstance(c.epochs, int)
    assert c.lr == 1.0 and isinstance(c.lr, float)


def test_fractional_val_size_is_kept():
    # regression: with an int default (5000), _coerce() turned val_size 0.25 into int(0.25) == 0
    assert make_config(overrides={"data": "cifar10", "val_size": 0.25}).val_size == 0.25
    assert make_config(overrides={"data": "cifar10", "val_size": 5000}).val_size == 5000


def test_non_integral_epochs_is_an_error():
    with pytest.raises(ConfigError, match="epochs"):
        make_config(overrides={"data": "cifar10", "epochs": 2.5})


def test_string_for_a_bool_option_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nesterov"):
        make_config(config_file=write(tmp_path / "c.yaml", "data: cifar10\nnesterov: 'no'\n"))


def test_yaml_accepts_hyphenated_option_names(tmp_path):
    c = make_config(config_file=write(tmp_path / "c.yaml", "data: cifar10\nbatch-size: 64\n"))
    assert c.batch_size == 64


# ------------------------------------------------------------------------------------------ ConfigError


def test_config_error_is_an_hcgnet_error():
    assert issubclass(ConfigError, hcgnet.HCGNetError)


ERROR_CASES = {
    "unknown recipe": (dict(recipe="cifar10-a9"), None, "cifar10-a9"),
    "missing config file": (dict(config_file="{tmp}/nope.yaml"), None, "nope.yaml"),
    "invalid YAML": (dict(config_file="{tmp}/c.yaml"), "epochs: [1, 2\nlr: 0.1\n", "not valid YAML"),
    "non-mapping YAML": (dict(config_file="{tmp}/c.yaml"), "- epochs\n- 3\n", "mapping"),
    "unknown option": (dict(config_file="{tmp}/c.yaml"), "data: cifar10\nlearning_rate: 0.1\n", "learning_rate"),
    "mistyped option": (dict(config_file="{tmp}/c.yaml"), "data: cifar10\nepoch: 3\n",
                        "unknown option 'epoch' (did you mean epochs?); options are"),
    "wrong type": (dict(config_file="{tmp}/c.yaml"), "data: cifar10\nepochs: many\n",
                   "option epochs must be a whole number, got 'many'"),
    "wrong float": (dict(config_file="{tmp}/c.yaml"), "data: cifar10\nlr: fast\n", "option lr must be a number, got"),
    "batch size 1": (dict(overrides={"data": "cifar10", "batch_size": 1}), None, "batch size 1"),
    "odd batch with mixup": (dict(overrides={"data": "cifar10", "batch_size": 7, "mixup": 1.0}), None, "even"),
    "amp fp8": (dict(overrides={"data": "cifar10", "amp": "fp8"}), None, "fp8"),
    "resume and overwrite": (dict(overrides={"data": "cifar10", "resume": True, "overwrite": True}), None,
                             "--resume"),
    "missing data": (dict(overrides={"epochs": 3}), None, "--data"),
    "unknown override": (dict(overrides={"data": "cifar10", "unknown": 1}), None, "'unknown'"),
    "lr nan": (dict(overrides={"data": "cifar10", "lr": float("nan")}), None, "lr must be a finite number"),
    "lr inf": (dict(overrides={"data": "cifar10", "lr": float("inf")}), None, "lr must be a finite number"),
    "lr 0": (dict(overrides={"data": "cifar10", "lr": 0}), None, "lr must be positive"),
    "momentum nan": (dict(overrides={"data": "cifar10", "momentum": float("nan")}), None, "momentum"),
    "batch size 0": (dict(overrides={"data": "cifar10", "batch_size": 0}), None, "batch size 0 is too small"),
    "negative freeze_stages": (dict(overrides={"data": "cifar10", "freeze_stages": -1}), None, "freeze_stages"),
    "drop_block 1": (dict(overrides={"data": "cifar10", "drop_block": 1.0}), None, "drop_block must be in [0, 1)"),
    "negative drop_block": (dict(overrides={"data": "cifar10", "drop_block": -0.1}), None, "drop_block"),
    "unknown stem": (dict(overrides={"data": "cifar10", "stem": "vgg"}), None, "'vgg'"),
    "max_test_images 0": (dict(overrides={"data": "cifar10", "max_test_images": 0}), None, "max_test_images"),
    "missing initial checkpoint": (dict(overrides={"data": "cifar10", "initial_checkpoint": "{tmp}/w.safetensors"}),
                                   None, "w.safetensors"),
    "freeze without checkpoint": (dict(overrides={"data": "cifar10", "freeze_stages": 1}), None,
                                  "--initial-checkpoint"),
    "fractional count of test images": (dict(overrides={"data": "cifar10", "test_size": 2.5}), None, "test_size"),
    "negative val_size": (dict(overrides={"data": "cifar10", "val_size": -1}), None, "val_size"),
    "warm-up as long as the run": (dict(overrides={"data": "cifar10", "epochs": 1, "warmup_epochs": 1}), None,
                                   "a warm-up of 1 epoch leaves no cosine in a run of 1 epoch"),
    "finetune without checkpoint": (dict(recipe="finetune", overrides={"data": "cifar10"}), None,
                                    "finetune recipe starts from trained weights: pass --initial-checkpoint FILE"),
    "finetune without anything": (dict(recipe="finetune"), None, "--initial-checkpoint FILE (.safetensors or .pt "
                                  "from hcgnet train or convert, or a published .pth.tar) and --data imagefolder:DIR"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_config_errors_are_one_line(tmp_path, case):
    kwargs, yaml_text, needle = ERROR_CASES[case]
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
    kwargs = {k: {o: w.format(tmp=tmp_path) if isinstance(w, str) else w for o, w in v.items()}
              if k == "overrides" else v for k, v in kwargs.items()}
    with pytest.raises(ConfigError) as e:
        make_config(**kwargs)
    message = str(e.value)
    assert needle in message
    assert "\n" not in message and message.strip() == message and message


def test_micro_batch_of_one_image_is_counted_in_the_singular():
    with pytest.raises(ConfigError) as e:
        make_config(overrides={"data": "cifar10", "batch_size": 2, "accum_steps": 2})
    message = str(e.value)
    assert "micro-batches of 1 image;" in message and "2 accumulation steps" in message
    assert "--batch-size 4" in message


def test_unknown_override_names_the_options():
    with pytest.raises(ConfigError, match="make_config: unknown option 'learning_rate'; options are model, "):
        make_config(overrides={"data": "cifar10", "learning_rate": 0.1})


def test_new_fields_default_to_automatic_or_off():
    c = make_config(overrides={"data": "cifar10"})
    assert (c.val_size, c.test_size, c.stem, c.initial_checkpoint, c.max_test_images) == (None,) * 5
    assert c.freeze_stages == 0 and c.drop_block == 0.0


def test_finetune_from_weights_that_do_not_name_their_network_needs_model(tmp_path):
    """A published-format file or a bare state dict names no network: refused before the data is read (the
    default hcgnet_a1 was assumed, and a B's weights refused after it)."""
    import torch

    weights = tmp_path / "plain.pt"
    torch.save({"stem.conv0.weight": torch.zeros(24, 3, 3, 3)}, weights)
    with pytest.raises(ConfigError) as e:
        make_config(recipe="finetune", overrides={"data": "imagefolder:x", "initial_checkpoint": str(weights)})
    assert str(e.value) == f"{weights} does not say which network it holds; pass --model NAME, the network it was " \
                           "trained as"
    c = make_config(recipe="finetune", overrides={"data": "imagefolder:x", "initial_checkpoint": str(weights),
                                                  "model": "hcgnet_a2"})
    assert c.model == "hcgnet_a2"


def test_fine_tuning_settings_are_accepted(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not read by make_config")
    c = make_config(overrides={"data": "cifar10", "initial_checkpoint": str(weights), "freeze_stages": 2,
                               "stem": "imagenet", "drop_block": 0.1, "max_test_images": 1, "test_size": 0.2})
    assert (c.initial_checkpoint, c.freeze_stages, c.stem, c.drop_block, c.max_test_images, c.test_size) == (
        str(weights), 2, "imagenet", 0.1, 1, 0.2)


def test_a_resumed_run_does_not_need_its_initial_checkpoint_any_more(tmp_path):
    c = make_config(overrides={"data": "cifar10", "initial_checkpoint": str(tmp_path / "gone.pt"), "resume": True})
    assert c.initial_checkpoint == str(tmp_path / "gone.pt")


def test_odd_batch_without_mixup_is_fine():
    assert make_config(overrides={"data": "cifar10", "batch_size": 7, "mixup": 0}).batch_size == 7


# ------------------------------------------------------------------------------------------ hcgnet train errors


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir()
        for i in range(4):
            pixels = rng.integers(0, 60, size=(20, 20, 3))
            pixels[..., c] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def train_error(capsys, *argv):
    code = main(["train", *argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hcgnet: error: ")
    assert "Traceback" not in err
    return lines[0]


def tiny_train_args(folder, out, *extra):
    return ["--data", f"imagefolder:{folder}", "--image-size", "16", "--epochs", "1", "--batch-size", "4",
            "--val-size", "3", "--workers", "0", "--output", str(out), *extra]


def test_train_unknown_model(capsys, small_folder, tmp_path):
    line = train_error(capsys, *tiny_train_args(small_folder, tmp_path / "out", "--model", "hcgnet_z9"))
    assert "hcgnet_z9" in line


def test_train_malformed_spec(capsys, small_folder, tmp_path):
    line = train_error(capsys, *tiny_train_args(small_folder, tmp_path / "out", "--model", "HCGNet-(1,1"))
    assert "HCGNet-(1,1" in line


def test_train_batch_size_1(capsys, small_folder, tmp_path):
    args = tiny_train_args(small_folder, tmp_path / "out")
    args[args.index("--batch-size") + 1] = "1"
    line = train_error(capsys, *args)
    assert "batch size 1" in line and "--batch-size" in line


def test_train_unknown_recipe(capsys, tmp_path):
    line = train_error(capsys, "--recipe", "cifar10-a9", "--output", str(tmp_path / "out"))
    assert "cifar10-a9" in line and "cifar10-a1" in line  # names the bad one and lists the good ones


def test_train_missing_config_file(capsys, small_folder, tmp_path):
    missing = tmp_path / "missing.yaml"
    line = train_error(capsys, *tiny_train_args(small_folder, tmp_path / "out", "--config", str(missing)))
    assert str(missing) in line


def test_train_missing_image_folder(capsys, tmp_path):
    line = train_error(capsys, "--data", "imagefolder:/nonexistent", "--output", str(tmp_path / "out"),
                       "--workers", "0")
    assert "/nonexistent" in line


def test_train_missing_cifar_says_where_to_put_it(capsys, tmp_path, monkeypatch):
    from hcgnet.data import datasets

    def offline(self):  # never download 170 MB in a test, even where there is a network
        raise OSError("offline")

    attempts = []
    monkeypatch.setattr(datasets.CIFAR10Files, "download", lambda self: attempts.append(1) or offline(self))
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--data", "cifar10", "--data-dir", str(empty), "--output", str(tmp_path / "out"), "--workers", "0"]
    line = train_error(capsys, *args)
    assert str(empty) in line
    assert "cifar-10-python.tar.gz" in line and "cifar-10-batches-py" in line
    assert line.endswith(f"or let torchvision download it: hcgnet download cifar10 --data-dir {empty}")
    assert attempts == [] and list(empty.iterdir()) == []  # nothing downloads unless asked
    line = train_error(capsys, *args, "--download")  # asked: tried, and the failure said in one line
    assert attempts == [1] and "could not be downloaded (offline)" in line and "cifar-10-python.tar.gz" in line


def test_train_refuses_a_folder_holding_another_run(capsys, small_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch,step\n1,10\n")
    (out / "last.pt").write_bytes(b"\x80\x02previous run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = train_error(capsys, *tiny_train_args(small_folder, out, "--model", "HCGNet-(1,1,1)-(k=8,8,8)"))
    assert str(out) in line
    assert "--resume" in line and "--overwrite" in line
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # nothing changed, nothing added


def test_recipes_command_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["recipe", "model", "data", "epochs", "batch", "lr"]
    assert "global batch" in lines[-1]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert set(rows) == set(list_recipes())
    assert rows["cifar10-a1"][:6] == ["cifar10-a1", "hcgnet_a1", "cifar10", "1270", "128", "0.1"]
    assert rows["imagenet-b"][:6] == ["imagenet-b", "hcgnet_b", "--data", "630", "256", "0.1"]
    assert rows["finetune"][:6] == ["finetune", "--model", "--data", "30", "64", "0.01"]
    assert "published code" in " ".join(rows["cifar100-a2-published"][6:])
    assert "paper's recipe" in " ".join(rows["cifar100-a2"][6:])


def train_parser():
    from hcgnet.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["train"]


# what `hcgnet train --help` must show as each default, written out (None fields: what unset means)
SHOWN_DEFAULTS = {"val_size": "automatic", "test_size": "automatic", "stem": "variant's own", "data": "required",
                  "initial_checkpoint": "random initialisation", "drop_rate": "variant's own",
                  "max_test_images": "whole test set", "cycle_epochs": "one cycle over the whole run",
                  "image_size": "imagefolder: the model's input size", "lr_base_batch": "lr as given",
                  "restart_every": "never",
                  "max_steps_per_epoch": "whole epochs", "data_dir": "~/.cache/hcgnet/data", "recipe": "none",
                  "nesterov": "on", "augment": "on", "ema": "off", "compile": "off", "channels_last": "off",
                  "skip_bad_images": "off", "resume": "off", "overwrite": "off", "weight_decay": "0.0001",
                  "drop_block": "0", "freeze_stages": "0", "model_kwargs": "the paper's network",
                  "device": "the GPU when there is one", "download": "off"}


def test_every_train_option_has_a_flag_with_help_and_its_default():
    parser = train_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for name, field in TrainConfig.__dataclass_fields__.items():
        action = by_dest.get(name)
        assert action is not None and "--" + name.replace("_", "-") in action.option_strings, name
        assert action.default is None, name  # None: not given, so a recipe or --config file can set it
        assert action.help and action.help.endswith(")") and "(default: " in action.help, name
        shown = action.help.split("(default: ")[-1][:-1]
        if name in SHOWN_DEFAULTS:
            assert SHOWN_DEFAULTS[name] in shown, (name, action.help)
        elif isinstance(field.default, (int, float)):
            assert float(shown) == field.default, (name, action.help)
        else:
            assert shown == field.default, (name, action.help)


def test_train_flags_are_grouped_as_timms_train_script_groups_them():
    groups = {g.title: {a.dest for a in g._group_actions} for g in train_parser()._action_groups}
    assert {"lr", "momentum", "weight_decay", "nesterov"} <= groups["Optimizer parameters"]
    assert {"epochs", "cycle_epochs", "cycle_mul", "warmup_epochs"} <= groups["Learning rate schedule parameters"]
    regularization = groups["Augmentation and regularization parameters"]
    assert {"mixup", "label_smoothing", "drop_rate", "drop_block"} <= regularization
    assert {"data", "val_size", "test_size"} <= groups["Dataset parameters"]
    assert {"initial_checkpoint", "freeze_stages"} <= groups["Fine-tuning parameters"]
    in_groups = set().union(*(v for k, v in groups.items() if k.endswith(" parameters")))
    assert set(TrainConfig.__dataclass_fields__) <= in_groups


def test_train_help_says_the_batch_is_global(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "GLOBAL batch" in out and "divided over the torchrun processes" in out


def test_train_lr_nan_is_one_line(capsys, small_folder, tmp_path):
    line = train_error(capsys, *tiny_train_args(small_folder, tmp_path / "out", "--lr", "nan"))
    assert "lr must be a finite number, got nan" in line
    assert not (tmp_path / "out").exists()


def test_train_batch_size_0_is_one_line(capsys, small_folder, tmp_path):
    args = tiny_train_args(small_folder, tmp_path / "out")
    args[args.index("--batch-size") + 1] = "0"
    line = train_error(capsys, *args)
    assert "batch size 0 is too small" in line and "--batch-size 2 or more" in line


# ------------------------------------------------------------------------------------------ DropBlock ramp


def dropblock_net():
    """Not an HCGNet: any model with DropBlock2d layers, nested, is what the schedule must find."""
    from timm.layers import DropBlock2d

    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), DropBlock2d(0.0, block_size=2),
                               torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), DropBlock2d(0.0, block_size=2)))


# 0.1 / 2 * (1 - cos(pi * position)), written out: position 1/4, 1/2, 3/4 of a cycle
QUARTER, HALF, THREE_QUARTERS = 0.0146446609406726, 0.05, 0.0853553390593274


@pytest.mark.parametrize("recipe,epoch,want", [
    ("cifar10-a1-published", 0, 0.0),
    ("cifar10-a1-published", 2.5, QUARTER),        # first cycle: epochs 0..10
    ("cifar10-a1-published", 5, HALF),
    ("cifar10-a1-published", 10, 0.0),            # second cycle: 10..30
    ("cifar10-a1-published", 25, THREE_QUARTERS),
    ("cifar10-a1-published", 110, HALF),          # fourth cycle: 70..150
    ("cifar10-a1-published", 630, 0.0),           # seventh cycle: 630..1270
    ("cifar10-a1-published", 1110, THREE_QUARTERS),
    ("cifar10-a2-published", 630, 0.0),           # A2's second run starts again with a cycle of 10
    ("cifar10-a2-published", 635, HALF),
    ("cifar10-a2-published", 470, HALF),          # sixth cycle of a run: 310..630
])
def test_dropblock_ramp_rises_within_every_sgdr_cycle(recipe, epoch, want):
    from hcgnet.training.schedule import DropBlockSchedule

    net = dropblock_net()
    schedule = DropBlockSchedule(net, recipe_config(recipe))
    assert schedule.step(epoch) == pytest.approx(want, abs=1e-12)
    probabilities = [m.drop_prob for m in net.modules() if hasattr(m, "drop_prob")]
    assert len(probabilities) == 2 and probabilities == pytest.approx([want, want], abs=1e-12)


def test_dropblock_ramp_reaches_the_maximum_at_the_end_of_a_cycle_and_restarts():
    from hcgnet.training.schedule import DropBlockSchedule

    schedule = DropBlockSchedule(dropblock_net(), recipe_config("cifar100-a1-published"))
    assert 0.0999 < schedule.step(29.99) < 0.1
    assert schedule.step(30) == pytest.approx(0.0, abs=1e-12)
    assert 0.0999 < schedule.step(1269.99) < 0.1


def test_dropblock_ramp_after_warmup_with_equal_cycles_and_past_the_limit():
    from hcgnet.training.schedule import DropBlockSchedule

    config = make_config(overrides={"data": "cifar10", "epochs": 20, "warmup_epochs": 2, "cycle_epochs": 4,
                                    "cycle_limit": 3, "drop_block": 0.2})
    schedule = DropBlockSchedule(dropblock_net(), config)
    assert schedule.step(1) == 0.0                                     # warm-up
    assert schedule.step(4) == pytest.approx(0.1, abs=1e-12)           # 2 epochs into the first 4
    assert schedule.step(9) == pytest.approx(2 * THREE_QUARTERS, abs=1e-12)  # cycles 2..6, 6..10, 10..14
    assert schedule.step(11) == pytest.approx(2 * QUARTER, abs=1e-12)
    assert schedule.step(15) == pytest.approx(0.2, abs=1e-12)         # 3 cycles are over: stays at the top


def test_dropblock_off_leaves_the_layers_at_zero():
    from hcgnet.training.schedule import DropBlockSchedule

    net = dropblock_net()
    assert DropBlockSchedule(net, recipe_config("cifar10-a1")).step(5) == 0.0
    assert all(m.drop_prob == 0.0 for m in net.modules() if hasattr(m, "drop_prob"))


def test_model_kwargs_from_a_yaml_mapping_is_kept_as_canonical_json(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: hcgnet_a1\ndata: cifar10\nmodel_kwargs: {update_gate: false, connectivity: dense}\n")
    from_yaml = make_config(config_file=str(path))
    assert from_yaml.model_kwargs == '{"connectivity": "dense", "update_gate": false}'
    from_flag = make_config(overrides={"model": "hcgnet_a1", "data": "cifar10",
                                       "model_kwargs": '{"connectivity": "dense", "update_gate": false}'})
    assert from_flag.model_kwargs == '{"connectivity": "dense", "update_gate": false}'


def test_device_is_checked_before_training_and_is_not_part_of_what_a_run_trains(monkeypatch):
    from hcgnet.ablate.grid import identity

    assert make_config(overrides={"data": "cifar10", "device": "cpu"}).device == "cpu"
    with pytest.raises(hcgnet.HCGNetError, match="--device 'gpu' is not a device; use cpu or cuda"):
        make_config(overrides={"data": "cifar10", "device": "gpu"})
    with pytest.raises(hcgnet.HCGNetError, match="--device mps: hcgnet runs on cpu or cuda"):
        make_config(overrides={"data": "cifar10", "device": "mps"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(hcgnet.HCGNetError, match="^--device cuda: no CUDA GPU here; use --device cpu$"):
        make_config(overrides={"data": "cifar10", "device": "cuda"})
    with pytest.raises(hcgnet.HCGNetError, match="^--device cuda:5: no CUDA GPU here; use --device cpu$"):
        make_config(overrides={"data": "cifar10", "device": "cuda:5"})    # the device as given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(hcgnet.HCGNetError, match="has 2 GPU"):
        make_config(overrides={"data": "cifar10", "device": "cuda:2"})
    # where a run trains does not change which run it is (ablate's identity), as with its output folder
    config = make_config(overrides={"data": "cifar10"}).to_dict()
    assert identity({**config, "device": "cpu"}) == identity({**config, "device": None})


@pytest.mark.parametrize("device,world,local_rank,expected", [
    ("cuda:1", 1, 0, "cuda:1"), ("cuda", 1, 0, "cuda:0"), ("auto", 1, 0, "cuda:0"),
    ("cuda:0", 2, 1, "cuda:1"),  # under torchrun every process takes its local GPU
    ("cpu", 1, 0, "cpu"),
])
def test_the_training_device(monkeypatch, device, world, local_rank, expected):
    from hcgnet import distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no process group to join here
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("RANK", str(local_rank))
    d = distributed.setup(device)
    assert d.device == torch.device(expected)
    assert chosen == ([] if expected == "cpu" else [torch.device(expected)])

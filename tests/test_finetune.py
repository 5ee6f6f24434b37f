"""Fine-tuning: ``prepare_model`` loads a checkpoint of another class count (classifier re-made, everything else
loaded), refuses another network in one line, and ``freeze`` keeps the stem and the first stages fixed,
parameters and BatchNorm statistics, while the rest trains."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hcgnet.errors import HCGNetError
from hcgnet.models import create_model, save_safetensors
from hcgnet.training.config import ConfigError, TrainConfig
from hcgnet.training.finetune import freeze, prepare_model

from conftest import make_image_folder

SPEC = "HCGNet-(1,1,1)-(k=4,4,4)"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    pass


@pytest.fixture
def checkpoint_10(tmp_path):
    """A trained-looking 10-class network: random BN statistics, so a fresh model never equals it by chance."""
    torch.manual_seed(1)
    source = create_model(SPEC, num_classes=10)
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5)
    path = tmp_path / "ten.safetensors"
    save_safetensors(source, path, {"model_name": SPEC, "num_classes": "10"})
    return path, {k: v.clone() for k, v in source.state_dict().items()}


def config(**kwargs):
    return TrainConfig(data="imagefolder:x", **kwargs)


def test_ten_classes_fine_tuned_into_three(checkpoint_10):
    path, saved = checkpoint_10
    torch.manual_seed(2)
    model = create_model(SPEC, num_classes=3)
    fresh_classifier = model.classifier.weight.detach().clone()
    lines = []
    prepare_model(model, config(initial_checkpoint=str(path)), lines.append)
    state = model.state_dict()
    loaded = [k for k in state if not k.startswith("classifier.")]
    assert len(loaded) == len(saved) - 2
    for key in loaded:
        assert torch.equal(state[key], saved[key]), key
    assert state["classifier.weight"].shape == (3, saved["classifier.weight"].shape[1])
    assert torch.equal(state["classifier.weight"], fresh_classifier)  # re-made: the model's own initialisation
    assert lines == [f"loaded {len(loaded)} tensors from {path}; classifier re-made for 3 classes "
                     "(the checkpoint has 10)"]


def test_same_class_count_loads_the_classifier_too(checkpoint_10):
    path, saved = checkpoint_10
    model = create_model(SPEC, num_classes=10)
    lines = []
    prepare_model(model, config(initial_checkpoint=str(path)), lines.append)
    assert torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert lines == [f"loaded {len(saved)} tensors from {path}"]


def test_a_training_checkpoint_and_a_published_one_load_too(tmp_path):
    source = create_model(SPEC, num_classes=4)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "last.pt")
    model = create_model(SPEC, num_classes=2)
    prepare_model(model, config(initial_checkpoint=str(tmp_path / "last.pt")), lambda _: None)
    assert torch.equal(model.stem.conv0.weight, source.stem.conv0.weight)

    # the published format (module. prefixes, gate FCs as 1x1 convs), loaded into a 5-class A1
    reference = create_model("hcgnet_a1", checkpoint_path=str(FIXTURES / "cifar_A1.official.pth.tar"))
    model = create_model("hcgnet_a1", num_classes=5)
    lines = []
    prepare_model(model, config(initial_checkpoint=str(FIXTURES / "cifar_A1.official.pth.tar")), lines.append)
    want = reference.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, want[key]), key
    assert lines[0].endswith("classifier re-made for 5 classes (the checkpoint has 10)")


def test_weights_without_a_classifier_get_one(tmp_path):
    source = create_model(SPEC, num_classes=0)
    save_safetensors(source, tmp_path / "features.safetensors")
    model = create_model(SPEC, num_classes=3)
    lines = []
    prepare_model(model, config(initial_checkpoint=str(tmp_path / "features.safetensors")), lines.append)
    key = "stages.2.transition.squeeze.conv1x1.conv.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    assert lines[0].endswith("; classifier re-made for 3 classes (the checkpoint has none)")


@pytest.mark.parametrize("other,needle", [
    ("HCGNet-(1,1,1)-(k=4,4,8)", "'stages.2.block.layers.0.squeeze.conv1x1.conv.weight' has shape (16, 5, 1, 1) "
                                 "but the model's is (32, 5, 1, 1)"),
    ("HCGNet-(1,1,2)-(k=4,4,4)", "has no 'stages.2.block.layers.1."),
    ("HCGNet-(1,1)-(k=4,4)", "'norm.weight' has shape (9,) but the model's is ("),
])
def test_another_network_is_refused_in_one_line(checkpoint_10, other, needle):
    path, _ = checkpoint_10
    model = create_model(other, num_classes=3)
    with pytest.raises(HCGNetError) as e:
        prepare_model(model, config(initial_checkpoint=str(path)), lambda _: None)
    message = str(e.value)
    assert needle in message and "\n" not in message
    assert f"--model '{SPEC}'" in message  # the checkpoint's metadata says what it holds


def test_another_channel_count_is_refused(checkpoint_10):
    path, _ = checkpoint_10
    model = create_model(SPEC, num_classes=3, in_chans=1)
    with pytest.raises(HCGNetError, match="images of 3 channels but the model \\(the dataset\\) has 1 channel;"):
        prepare_model(model, config(initial_checkpoint=str(path)), lambda _: None)


# ------------------------------------------------------------------------------------------ freezing


def batchnorm_buffers(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_stages_stay_fixed_while_the_rest_trains(checkpoint_10):
    path, _ = checkpoint_10
    torch.manual_seed(0)
    model = create_model(SPEC, num_classes=3)
    lines = []
    prepare_model(model, config(initial_checkpoint=str(path), freeze_stages=2), lines.append)
    assert lines[1].startswith("froze stem, stages.0, stages.1: ")
    frozen = ("stem.", "stages.0.", "stages.1.")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5, momentum=0.9)
    for step in range(3):
        model.train()  # as the trainer does every epoch
        x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key in before:
        if key.startswith(frozen):
            assert torch.equal(after[key], before[key]), f"{key} changed although frozen"
    changed = [k for k in before if not k.startswith(frozen) and not torch.equal(after[k], before[k])]
    assert any(k.startswith("stages.2.") and "running_mean" in k for k in changed)  # BN still learns there
    assert any(k.startswith("stages.2.") and k.endswith("conv.weight") for k in changed)
    assert "classifier.weight" in changed
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(frozen))


def test_frozen_batchnorm_is_in_eval_mode_at_every_forward():
    model = create_model(SPEC, num_classes=3)
    freeze(model, 1)
    model.train()
    model(torch.randn(2, 3, 16, 16))
    assert not model.stages[0].training and all(not m.training for m in model.stages[0].modules())
    assert model.stages[1].training


def test_freeze_names_and_limits():
    model = create_model(SPEC, num_classes=3)
    assert freeze(model, 0) == [] and all(p.requires_grad for p in model.parameters())
    assert freeze(create_model(SPEC, num_classes=3), 3) == ["stem", "stages.0", "stages.1", "stages.2"]
    with pytest.raises(ConfigError, match=r"--freeze-stages 4: the model has 3 stages; freeze 0 to 3"):
        freeze(create_model(SPEC, num_classes=3), 4)


# ------------------------------------------------------------------------------------------ hcgnet train


def test_hcgnet_train_fine_tunes_a_checkpoint_onto_a_folder_of_another_class_count(checkpoint_10, tmp_path):
    path, saved = checkpoint_10
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=8)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hcgnet", "train", "--recipe", "finetune", "--model", SPEC,
         "--initial-checkpoint", str(path), "--freeze-stages", "1", "--data", f"imagefolder:{folder}",
         "--image-size", "20", "--epochs", "1", "--warmup-epochs", "0.5", "--batch-size", "4",
         "--max-steps-per-epoch", "2",
         "--workers", "0", "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"loaded {len(saved) - 2} tensors from {path}; classifier re-made for 2 classes (the checkpoint has 10)" \
        in result.stdout + result.stderr
    final = load_file(str(out / "final.safetensors"))
    assert final["classifier.weight"].shape[0] == 2
    for key in saved:
        if key.startswith(("stem.", "stages.0.")):  # frozen: exactly the checkpoint's
            assert torch.equal(final[key], saved[key]), key
    assert not torch.equal(final["stages.2.block.layers.0.squeeze.conv1x1.conv.weight"],
                           saved["stages.2.block.layers.0.squeeze.conv1x1.conv.weight"])


def test_a_checkpoint_with_keys_the_model_lacks_is_refused(checkpoint_10, tmp_path):
    """Every tensor of the model fits, but the checkpoint holds one more (a deeper network's layer, an extra
    head): loading the rest would silently drop it."""
    _, saved = checkpoint_10
    extra = "stages.2.block.layers.1.squeeze.conv1x1.conv.weight"
    path = tmp_path / "more.safetensors"
    from safetensors.torch import save_file

    save_file({**saved, extra: torch.zeros(4, 4, 1, 1)}, str(path))
    model = create_model(SPEC, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(HCGNetError) as e:
        prepare_model(model, config(initial_checkpoint=str(path)), lambda _: None)
    assert f"{path} has '{extra}', which the model lacks: it holds another network" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was loaded


def test_resume_takes_the_weights_from_the_run_not_the_initial_checkpoint(checkpoint_10, tmp_path, monkeypatch):
    from hcgnet.training import finetune, make_config, resume_config, trainer

    path, _ = checkpoint_10
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=8)
    out = tmp_path / "run"
    trainer.fit(make_config(overrides=dict(model=SPEC, data=f"imagefolder:{folder}", image_size=16, epochs=1,
                                           batch_size=4, max_steps_per_epoch=1, workers=0, output=str(out),
                                           initial_checkpoint=str(path))), log=lambda _: None)
    path.write_bytes(b"replaced since: not a checkpoint any more")
    reads = []
    monkeypatch.setattr(finetune, "read_state_dict", lambda *a, **k: reads.append(a) or pytest.fail("re-read"))
    lines = []
    trainer.fit(resume_config(str(out), {"epochs": 2}), log=lines.append)
    assert reads == []
    assert f"resuming: the weights come from the run's own checkpoint, not {path}" in lines

"""Preprocessing defaults from the model and the data (hcgnet.data.defaults): the input size and crop of the
model's pretrained_cfg, as timm's resolve_data_config takes them; CIFAR's augmentation for the CIFAR stem and
small images, ImageNet's otherwise; --hflip; the notes that say which and when the images do not fit."""
import pytest
import torch
from torchvision import transforms as T

from conftest import make_image_folder
from hcgnet.data import DataError, build_data, resolve_data_config
from hcgnet.data.transforms import FitTo
from hcgnet.models import create_model

# The two stems' configs written out by hand (the paper: CIFAR 32x32 whole images; ImageNet a 224 crop of 256).
CIFAR_CFG = {"input_size": (3, 32, 32), "crop_pct": 1.0, "mean": (0.4914, 0.4822, 0.4465),
             "std": (0.2470, 0.2435, 0.2616)}
IMAGENET_CFG = {"input_size": (3, 224, 224), "crop_pct": 0.875, "mean": (0.485, 0.456, 0.406),
                "std": (0.229, 0.224, 0.225)}
SPEC = "HCGNet-(1,1,1)-(k=4,4,4)"  # 3 blocks: the CIFAR stem


def kinds(transform):
    return [type(t) for t in transform.transforms]


@pytest.mark.parametrize("cfg,image_size,small,expected_size,expected_resize", [
    (CIFAR_CFG, None, False, (3, 32, 32), None),            # CIFAR stem: whole 32 px images
    (IMAGENET_CFG, None, False, (3, 224, 224), 256),        # ImageNet stem: 224 crop of a 256 resize
    (dict(IMAGENET_CFG, crop_pct=0.95), None, False, (3, 224, 224), 235),  # a timm model's own crop: 224 / 0.95
    (IMAGENET_CFG, 64, False, (3, 64, 64), 73),             # --image-size replaces the size, the crop stays
    (IMAGENET_CFG, None, True, (3, 224, 224), None),        # small images are fitted whole
    (None, None, False, (3, 224, 224), 256),                # no model: the ImageNet stem's
])
def test_the_input_size_and_crop_come_from_the_model(cfg, image_size, small, expected_size, expected_resize):
    config = resolve_data_config(cfg, ["a", "b"], image_size=image_size, small_images=small)
    assert (config.input_size, config.resize) == (expected_size, expected_resize)
    assert config.class_names == ["a", "b"]


def test_statistics_come_from_the_model_and_are_averaged_for_a_grayscale_model():
    config = resolve_data_config(CIFAR_CFG, ["a"], in_chans=1)
    assert config.input_size == (1, 32, 32)
    assert config.mean == pytest.approx(((0.4914 + 0.4822 + 0.4465) / 3,))
    assert config.std == pytest.approx(((0.2470 + 0.2435 + 0.2616) / 3,))
    assert resolve_data_config(CIFAR_CFG, ["a"]).mean == CIFAR_CFG["mean"]
    with pytest.raises(DataError, match="image_size must be a whole number of pixels >= 8"):
        resolve_data_config(CIFAR_CFG, ["a"], image_size=4)


def test_the_stems_of_real_models_give_32_and_224(single_thread):
    with torch.device("meta"):  # only the configs are needed
        assert resolve_data_config(create_model(SPEC).pretrained_cfg, ["a"]).input_size == (3, 32, 32)
        assert resolve_data_config(create_model("hcgnet_b").pretrained_cfg, ["a"]).input_size == (3, 224, 224)
        imagenet = create_model(SPEC, stem="imagenet").pretrained_cfg
        assert resolve_data_config(imagenet, ["a"]).input_size == (3, 224, 224)


def test_small_images_and_the_cifar_stem_get_cifars_augmentation(tmp_path):
    digits = make_image_folder(tmp_path / "digits", classes=2, per_class=6, size=(8, 8))
    data = build_data(f"imagefolder:{digits}", model_cfg=CIFAR_CFG)
    assert data.config.input_size == (3, 32, 32) and data.config.resize is None
    train = data.train.dataset.transform
    assert T.RandomResizedCrop not in kinds(train) and FitTo in kinds(train)
    crop = next(t for t in train.transforms if isinstance(t, T.RandomCrop))
    assert crop.size == (32, 32) and crop.padding == 4  # CIFAR's 4 px at 32 px
    assert data.train[0][0].shape == (3, 32, 32) and data.val[0][0].shape == (3, 32, 32)
    assert "augmentation: CIFAR's (pad 4 px, random 32x32 crop, horizontal flip p=0.5); --hflip 0 for data where " \
           "mirror images are wrong (digits, text)" in data.notes
    # small images meet the ImageNet stem: still CIFAR's augmentation (a random-resized crop of 8% of 8x8 is noise)
    data = build_data(f"imagefolder:{digits}", model_cfg=IMAGENET_CFG, image_size=48)
    assert data.config.resize is None and T.RandomResizedCrop not in kinds(data.train.dataset.transform)
    assert next(t for t in data.train.dataset.transform.transforms if isinstance(t, T.RandomCrop)).padding == 6


def test_large_images_and_the_imagenet_stem_get_imagenets_augmentation(tmp_path):
    photos = make_image_folder(tmp_path / "photos", classes=2, per_class=6, size=(100, 120))
    data = build_data(f"imagefolder:{photos}", model_cfg=IMAGENET_CFG, image_size=96)
    assert data.config.resize == int(96 / 0.875)
    assert T.RandomResizedCrop in kinds(data.train.dataset.transform)
    assert T.RandomCrop not in kinds(data.train.dataset.transform)
    assert any(n.startswith("augmentation: ImageNet's (RandomResizedCrop 96x96") for n in data.notes)


@pytest.mark.parametrize("hflip,flips", [(0.0, []), (0.3, [0.3]), (1.0, [1.0])])
def test_hflip_sets_the_flip_probability_and_0_removes_it(tmp_path, hflip, flips):
    folder = make_image_folder(tmp_path / "imgs", classes=2, per_class=6, size=(8, 8))
    data = build_data(f"imagefolder:{folder}", model_cfg=CIFAR_CFG, hflip=hflip)
    assert [t.p for t in data.train.dataset.transform.transforms if isinstance(t, T.RandomHorizontalFlip)] == flips
    assert ("no flip (--hflip 0)" in " ".join(data.notes)) == (hflip == 0)


def test_a_flip_of_probability_1_mirrors_every_image():
    from PIL import Image

    from hcgnet.data import build_eval_transform, build_train_transform

    config = resolve_data_config(CIFAR_CFG, ["a"], image_size=8)
    image = Image.new("RGB", (8, 8))
    image.putpixel((0, 3), (255, 255, 255))  # one white pixel at the left edge
    flipped = build_train_transform(config, hflip=1.0).transforms
    flipped = T.Compose([t for t in flipped if not isinstance(t, T.RandomCrop)])  # keep only the flip random
    plain = build_eval_transform(config)(image)
    assert torch.equal(flipped(image), plain.flip(-1))


def test_the_log_says_when_the_images_are_far_from_the_input_size(tmp_path):
    digits = make_image_folder(tmp_path / "digits", classes=2, per_class=6, size=(8, 8))
    notes = " ".join(build_data(f"imagefolder:{digits}", model_cfg=CIFAR_CFG).notes)
    assert "are about 8 px (median shorter side), the model's input size is 32 px: they are upscaled about 4x; " \
           "--image-size N trains at another size" in notes
    explicit = " ".join(build_data(f"imagefolder:{digits}", model_cfg=CIFAR_CFG, image_size=64).notes)
    assert "--image-size is 64 px: they are upscaled about 8x" in explicit and "trains at another" not in explicit
    near = make_image_folder(tmp_path / "near", classes=2, per_class=6, size=(40, 50))
    assert not any("median shorter side" in n for n in build_data(f"imagefolder:{near}", model_cfg=CIFAR_CFG).notes)

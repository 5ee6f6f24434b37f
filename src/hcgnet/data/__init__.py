"""Data for training and evaluating HCGNets: CIFAR-10/100, Fashion-MNIST and ImageFolder trees (torchvision).

    from hcgnet.data import build_data, build_eval_dataset, build_eval_transform
    data = build_data("cifar10", data_dir="~/data", seed=0)      # val_size/test_size None: automatic
    data.train, data.val, data.test, data.num_classes, data.config, data.notes
    transform = build_eval_transform(data.config)   # for predict/eval, also from a JSON-rebuilt DataConfig
    whole = build_eval_dataset("imagefolder:photos", data.config, split="all")
    config = resolve_data_config(model.pretrained_cfg, class_names)  # a checkpoint without preprocessing
    note = image_size_note(image_paths, config, "imagefolder:photos")  # None unless far from the input size

Modules: ``datasets`` (the two entry points), ``config`` (DataConfig, DataBundle), ``splits`` (hold-out
sizes and indices), ``cifar``, ``fashion_mnist``, ``image_folder`` (the sources), ``images`` (reading and
checking image files), ``transforms``, ``defaults`` (preprocessing from the model and the data), ``errors``.
Only :mod:`hcgnet.errors`, :mod:`hcgnet.files` and the models' CIFAR-10 statistics are imported from the rest
of the package.
"""
from hcgnet.data.config import DataBundle, DataConfig
from hcgnet.data.defaults import image_size_note, resolve_data_config
from hcgnet.data.datasets import (DATASETS, EVAL_SPLITS, absolute_spec, build_data, build_eval_dataset,
                                  default_data_dir, download_dataset, skipped_note, spec_folder)
from hcgnet.data.errors import ChannelsMismatch, DataError, error_message
from hcgnet.data.images import load_image
from hcgnet.data.splits import auto_held_out, split_indices
from hcgnet.data.transforms import build_eval_transform, build_train_transform

__all__ = [
    "DATASETS", "EVAL_SPLITS", "ChannelsMismatch", "DataBundle", "DataConfig", "DataError", "absolute_spec", "auto_held_out",
    "build_data", "build_eval_dataset", "build_eval_transform", "build_train_transform", "default_data_dir",
    "download_dataset", "error_message", "image_size_note", "load_image", "resolve_data_config", "skipped_note",
    "spec_folder", "split_indices",
]

"""Data for training and evaluating HCGNets: CIFAR-10/100, Fashion-MNIST and ImageFolder trees (torchvision).

    from hcgnet.data import build_data, build_eval_transform
    data = build_data("cifar10", data_dir="~/data", val_size=5000, seed=0)
    data.train, data.val, data.test, data.num_classes, data.config
    transform = build_eval_transform(data.config)   # for predict/eval, also from a JSON-rebuilt DataConfig

Only :mod:`hcgnet.errors` is imported from the rest of the package.
"""
from hcgnet.data.datasets import (
    DATASETS, DataBundle, DataConfig, DataError, build_data, default_data_dir, error_message, load_image,
    split_indices,
)
from hcgnet.data.transforms import build_eval_transform, build_train_transform

__all__ = [
    "DATASETS", "DataBundle", "DataConfig", "DataError", "build_data", "build_eval_transform",
    "build_train_transform", "default_data_dir", "error_message", "load_image", "split_indices",
]

"""Data order and augmentation randomness that a resumed run reproduces exactly.

* The order of an epoch is torch's ``DistributedSampler`` permutation for ``(seed, epoch)``; a run resumed
  mid-epoch skips the batches it already took.
* Each sample's augmentation draws from its own generator seeded by ``(seed, epoch, index)``, so it does
  not depend on the worker count, on which batches came before, or on a restart.
"""
import random
from typing import Iterator, List, Sized

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``i`` of epoch ``e`` is augmented with a fixed seed."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        sample_seed = hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            state = random.getstate()
            random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


class ResumableSampler(Sampler[int]):
    """``DistributedSampler`` (shuffled by ``seed + epoch``, one shard per rank) that can start after the
    first ``skip_batches`` batches of the epoch."""

    def __init__(self, dataset: Sized, batch_size: int, num_replicas: int, rank: int, seed: int) -> None:
        self.inner = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size, self.skip = batch_size, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


class ShardSampler(Sampler[int]):
    """Evaluation order for one rank: every ``world``-th index, no padding, so that the ranks together see
    every sample exactly once."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices: List[int] = list(range(rank, length, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

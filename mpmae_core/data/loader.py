"""A loader that feeds training at full speed and resumes exactly mid-epoch.

``EpochSampler`` shuffles deterministically per (seed, epoch), shards the order over DDP ranks,
and starts at any batch of an epoch, so an interrupted run resumes with exactly the batches an
uninterrupted one would have seen. It yields (position, epoch) pairs: the dataset derives each
sample's random crop from them, independent of which worker loads it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler):
    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} samples cannot fill one batch of {batch_size} on each of {world_size} rank(s)")

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per rank and epoch (the remainder is dropped, the same on every rank)."""
        return (self.n // self.world_size) // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample positions for ``epoch``, whole epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        per_rank = self.batches_per_epoch * self.batch_size
        return perm[self.rank::self.world_size][:per_rank]

    def __iter__(self):
        order = self.order(self.epoch)[self.start_batch * self.batch_size:]
        epoch = self.epoch
        return iter([(int(i), epoch) for i in order])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def make_loader(dataset, batch_size: int, workers: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1,
                shuffle: bool = True, pin_memory: Optional[bool] = None, prefetch_factor: int = 4) -> DataLoader:
    """DataLoader over ``dataset`` with an EpochSampler (``loader.sampler``); pinned memory on CUDA."""
    sampler = EpochSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size, shuffle=shuffle)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kwargs = {"num_workers": workers, "pin_memory": pin_memory}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)

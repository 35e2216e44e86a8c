"""A shuffling sampler whose order is a pure function of (seed, epoch), sharded over ranks, that resumes mid-epoch.

The permutation of epoch e is `torch.randperm(n, generator=manual_seed(seed + e))` on CPU: the same on
every machine and independent of any global RNG state. With `num_replicas` W > 1 rank r takes positions
r, r + W, r + 2W, ... of that permutation (strided, as DistributedSampler does), after dropping the tail
or padding it with the permutation's first entries so every rank yields the same count (DDP and FSDP need
equal batch counts or they hang). Strided shards have one property the resume math rests on: after every
rank has taken k indices, the ranks together have consumed exactly the permutation's first k * W.

So the resumable state is one global number: `state_dict()` stores (epoch, consumed) with consumed counted
over all ranks (per-rank count × W), and `load_state_dict()` makes the next iteration of that epoch shard
`permutation[consumed:]` over the ranks it runs on now, whatever their number: a run checkpointed on two
processes resumes on one (or on four) and sees exactly the samples the epoch had not reached.

Why a DistributedSampler subclass: Lightning wraps any other sampler of a distributed run in its
DistributedSamplerWrapper, which re-shuffles our order with its own seed and materialises the sampler's
(resume-shortened) list against the full length, so a mid-epoch resume would index past its end. A
DistributedSampler is left alone. The data modules build it from ``trainer.distributed_sampler_kwargs``.

Caveat: with DataLoader workers the loader pulls indices ahead of the model (prefetch_factor × num_workers
batches), so the sampler's own count overshoots what the model has trained on. A recipe that knows the
true number (batches done × batch size × world size) should pass it: `state_dict(consumed=...)`.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from zoo.errors import DataError


def shard_kwargs(trainer) -> tuple[int, int]:
    """(num_replicas, rank) of the trainer's strategy for sharding training data; (1, 0) on one device."""
    kw = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if not kw:
        return 1, 0
    return int(kw.get("num_replicas", 1)), int(kw.get("rank", 0))


class ResumableRandomSampler(DistributedSampler):
    """Seeded per-epoch random permutation of range(n), sharded over `num_replicas` ranks, with mid-epoch
    resume (also onto a different number of ranks).

    drop_last: with W > 1, drop the permutation's tail that does not divide by W (else pad it by repeating
    the first indices). Irrelevant for W = 1.
    """

    def __init__(self, n: int, seed: int = 0, num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        if n < 0:
            raise DataError(f"ResumableRandomSampler needs n >= 0, got {n}.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise DataError(f"ResumableRandomSampler needs 0 <= rank < num_replicas, got rank {rank} of "
                            f"{num_replicas}.")
        # explicit num_replicas/rank: DistributedSampler then needs no process group
        super().__init__(range(int(n)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed),
                         drop_last=drop_last)
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self._start = 0        # global indices of `epoch` to skip on the next iteration (set by load_state_dict)
        self._done_before = 0  # per-rank share of the consumed samples at this world size (for __len__)
        self._yielded = 0      # global indices of `epoch` handed out so far, counting skipped ones

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation; Lightning calls this at every epoch start. A pending resume offset only
        survives if it belongs to this same epoch."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._start = 0
            self._done_before = 0
            self._yielded = 0
        self.epoch = epoch

    def permutation(self, epoch: int | None = None) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else int(epoch)))
        return torch.randperm(self.n, generator=g).tolist()

    def _shard_len(self, m: int) -> int:
        """Indices each rank gets out of m to share."""
        w = self.num_replicas
        return m // w if self.drop_last else math.ceil(m / w)

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's strided share of `indices`, the tail dropped or padded so all ranks get as many."""
        w = self.num_replicas
        if w == 1:
            return indices
        per_rank = self._shard_len(len(indices))
        total = per_rank * w
        if total > len(indices) and indices:
            reps = math.ceil((total - len(indices)) / len(indices))
            indices = indices + (indices * reps)[: total - len(indices)]
        return indices[self.rank:total:w]

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation()
        start, self._start = self._start, 0
        self._done_before = 0
        self._yielded = start
        for i in self.shard(perm[start:]):
            self._yielded += self.num_replicas
            yield i

    def __len__(self) -> int:
        # the full epoch even while resuming: Lightning restores its batch counter to the resumed position
        # and ends the epoch at len(dataloader); a shorter length would end a resumed epoch early. After a
        # change of world size, zoo fit rescales that counter to consumed / new world size (see
        # zoo.recipes.distributed.WorldSizeResume); rounding may make that plus what is left exceed a full
        # epoch by a sample, and then that is the length (data exhaustion ends later epochs).
        full = self._shard_len(self.n)
        if self._start:
            return max(full, self._done_before + self._shard_len(self.n - self._start))
        return full

    @property
    def remaining(self) -> int:
        """Indices (all ranks together) the next iteration covers: n minus a pending resume offset."""
        return self.n - self._start

    def state_dict(self, consumed: int | None = None) -> dict:
        """(epoch, consumed over all ranks) plus seed, n and world size to check on load; `consumed`
        overrides the sampler's own count."""
        return {"seed": self.seed, "n": self.n, "epoch": self.epoch, "world_size": self.num_replicas,
                "consumed": self._yielded if consumed is None else int(consumed)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise DataError(
                f"Sampler state is for n={state['n']}, seed={state['seed']} but this run has n={self.n}, "
                f"seed={self.seed}: the data set or seed changed since the checkpoint. Resume with the same "
                f"data and seed, or start a fresh run.")
        self.epoch = int(state["epoch"])
        consumed = int(state["consumed"])
        self._start = consumed if 0 <= consumed < self.n else 0  # a finished epoch resumes as a fresh one
        self._done_before = self._start // self.num_replicas
        self._yielded = self._start

"""A shuffling sampler whose order is a pure function of (seed, epoch), so training can resume mid-epoch.

The permutation of epoch e is `torch.randperm(n, generator=manual_seed(seed + e))` on CPU: the same on
every machine and independent of any global RNG state. The sampler counts the indices it hands out; its
`state_dict()` stores (epoch, consumed) and `load_state_dict()` makes the next iteration of that epoch skip
the first `consumed` indices, so a resumed run sees exactly the remaining samples in the same order.

Caveat: with DataLoader workers the loader pulls indices ahead of the model (prefetch_factor × num_workers
batches), so the sampler's own count overshoots what the model has trained on. A recipe that knows the
true number (batches done × batch size) should pass it: `state_dict(consumed=...)`.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from zoo.errors import DataError


class ResumableRandomSampler(Sampler[int]):
    """Seeded per-epoch random permutation of range(n) with mid-epoch resume."""

    def __init__(self, n: int, seed: int = 0):
        if n < 0:
            raise DataError(f"ResumableRandomSampler needs n >= 0, got {n}.")
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self._start = 0      # indices of `epoch` to skip on the next iteration (set by load_state_dict)
        self._yielded = 0    # indices of `epoch` handed out so far, counting skipped ones

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation; Lightning calls this at every epoch start. A pending resume offset only
        survives if it belongs to this same epoch."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._start = 0
            self._yielded = 0
        self.epoch = epoch

    def permutation(self, epoch: int | None = None) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else int(epoch)))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation()
        start, self._start = self._start, 0
        self._yielded = start
        for i in perm[start:]:
            self._yielded += 1
            yield i

    def __len__(self) -> int:
        # the full epoch even while resuming: Lightning restores its batch counter to the resumed position
        # and ends the epoch at len(dataloader); a shorter length would end a resumed epoch early
        return self.n

    @property
    def remaining(self) -> int:
        """Indices the next iteration yields (n minus a pending resume offset)."""
        return self.n - self._start

    def state_dict(self, consumed: int | None = None) -> dict:
        """(epoch, consumed) plus seed and n to check on load; `consumed` overrides the sampler's own count."""
        return {"seed": self.seed, "n": self.n, "epoch": self.epoch,
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
        self._yielded = self._start

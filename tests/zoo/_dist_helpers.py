"""A callback for the distributed tests, imported by the `zoo fit` processes they start (on PYTHONPATH)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class Probe(Callback):
    """Each rank writes its weights, step count and epoch-end steps to <run dir>/rank<r>.pt at the end of fit,
    or, with ZOO_TEST_EXIT_AT_STEP=K, just before step K+1 and then exits (a crash after step K's checkpoint)."""

    def __init__(self):
        self.epoch_end_steps: list[int] = []
        self.exit_at = int(os.environ.get("ZOO_TEST_EXIT_AT_STEP", "0"))

    def _dump(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save({"weights": state, "global_step": trainer.global_step, "world_size": trainer.world_size,
                    "epoch_end_steps": self.epoch_end_steps, "num_training_batches": trainer.num_training_batches},
                   Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")

    def on_train_epoch_end(self, trainer, pl_module):
        self.epoch_end_steps.append(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.exit_at and trainer.global_step == self.exit_at:
            self._dump(trainer, pl_module)
            trainer.strategy.barrier("probe-exit")  # both ranks have dumped before either goes
            os._exit(0)

    def on_fit_end(self, trainer, pl_module):
        self._dump(trainer, pl_module)

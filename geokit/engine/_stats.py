"""Per-epoch statistics: the running totals an epoch keeps (and a resume restores), and the
epoch's ``metrics.jsonl`` row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpochStats:
    """Running totals of the epoch in progress; saved in the resume state as ``epoch_stats``."""

    loss_sum: float = 0.0
    steps: int = 0  # optimisation steps taken
    images: int = 0  # query and reference images trained on, all ranks together
    seconds: float = 0.0  # training time so far (saved at each checkpoint; a resume continues it)
    skipped: int = 0  # pairs skipped on this rank (unreadable images)

    def add_step(self, loss: float, pairs: int) -> None:
        self.steps += 1
        self.images += 2 * pairs
        self.loss_sum += loss

    def to_state(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum,
            "steps": self.steps,
            "images": self.images,
            "seconds": self.seconds,
            "skipped": self.skipped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochStats:
        """From a saved state (older versions wrote every total as a float)."""
        return cls(
            loss_sum=float(state["loss_sum"]),
            steps=int(float(state["steps"])),
            images=int(float(state["images"])),
            seconds=float(state["seconds"]),
            skipped=int(float(state["skipped"])),
        )


@dataclass
class EpochRow:
    """One finished epoch, as written to ``metrics.jsonl`` and kept in ``TrainResult.history``.

    :ivar skipped_pairs: all ranks' skipped pairs, reported only with ``train.bad_images=skip``.
    :ivar loss_params: the loss's scalar parameters (``loss.logit_scale``...), by name.
    :ivar evaluation: periodic evaluation's metrics (``train.eval_every``), by name.
    """

    epoch: int
    step: int
    loss: float
    lr: float
    batches: int
    seconds: float
    images_per_s: float
    skipped_pairs: int | None = None
    loss_params: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` keys, in their order: epoch, step, loss, lr, batches, seconds,
        images_per_s, [skipped_pairs], ``loss.NAME``..., ``eval/METRIC``..."""
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "loss": self.loss,
            "lr": self.lr,
            "batches": self.batches,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
        }
        if self.skipped_pairs is not None:
            row["skipped_pairs"] = self.skipped_pairs
        row.update({f"loss.{k}": v for k, v in self.loss_params.items()})
        row.update({f"eval/{k}": v for k, v in self.evaluation.items()})
        return row

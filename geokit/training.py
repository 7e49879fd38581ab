"""The training engine's public import path; the implementation lives in :mod:`geokit.engine`.

``from geokit.training import train, TrainStep, ...`` keeps working: every public name of
:mod:`geokit.engine` is re-exported here.
"""

from geokit.engine import (
    LOCK,
    RESUME_FREE,
    STATE,
    STATE_FORMAT,
    WEIGHTS,
    EpochRow,
    EpochStats,
    NonFiniteLoss,
    ResumeState,
    TrainingInterrupted,
    TrainResult,
    TrainStep,
    collate_pairs,
    config_differences,
    evaluate_after_training,
    loss_inputs,
    lr_at,
    max_full_batches,
    read_steps,
    resume_free_keys,
    step_seed,
    train,
)

__all__ = [
    "LOCK",
    "RESUME_FREE",
    "STATE",
    "STATE_FORMAT",
    "WEIGHTS",
    "EpochRow",
    "EpochStats",
    "NonFiniteLoss",
    "ResumeState",
    "TrainResult",
    "TrainStep",
    "TrainingInterrupted",
    "collate_pairs",
    "config_differences",
    "evaluate_after_training",
    "loss_inputs",
    "lr_at",
    "max_full_batches",
    "read_steps",
    "resume_free_keys",
    "step_seed",
    "train",
]

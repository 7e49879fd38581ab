"""The training engine: AdamW, per-step cosine schedule with linear warm-up, value clipping,
mixed precision, data-parallel over ranks, gradient caching, exact resume.

A run folder holds ``config.yaml`` (resolved), ``train.log`` (config and versions at the top),
``metrics.jsonl`` (one line per epoch), ``steps.jsonl`` (loss and lr every ``train.log_every``
steps), ``state.safetensors`` (resume state, rewritten atomically at every epoch end and every
``train.checkpoint_every`` steps) and, at the end, ``model.safetensors`` (the shareable weights +
record). Running the same command on the same folder resumes from the last checkpoint; on a CPU
with a fixed seed the resumed run ends with bit-identical weights.

Distributed (``torchrun --nproc_per_node=N -m geokit train ...``): every rank trains on its
slice of each global batch (``rank_slice``), the embeddings are all-gathered with gradients so
the loss sees the whole global batch, and gradients are scaled so that DDP's average equals the
single-process gradient. Rank 0 logs, checkpoints and evaluates; the others wait.

Modules: ``_setup`` (train(), all set-up), ``_loop`` (the engine: epochs and steps), ``_step``
(one optimisation step), ``_feed`` (what the sampler is given), ``_schedule`` (lr and steps),
``_stats`` (per-epoch statistics), ``_resume`` (resume state, config check), ``_rundir`` (the
run folder's files).
"""

from geokit.engine._loop import TrainingInterrupted, TrainResult, evaluate_after_training
from geokit.engine._resume import RESUME_FREE, STATE_FORMAT, ResumeState, config_differences, resume_free_keys
from geokit.engine._rundir import LOCK, STATE, WEIGHTS, read_steps
from geokit.engine._schedule import lr_at, max_full_batches, step_seed
from geokit.engine._setup import train
from geokit.engine._stats import EpochRow, EpochStats
from geokit.engine._step import NonFiniteLoss, TrainStep, collate_pairs, loss_inputs

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

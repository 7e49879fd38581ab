"""What the engine gives the sampler and takes from it: the epoch and step contexts (with the
embedding callbacks similarity mining uses), an epoch's batches, and a step-level sampler's
batches loaded right before their steps."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from geokit import distributed as D
from geokit.config import Config
from geokit.data import PairList, TrainSet
from geokit.engine._step import collate_pairs
from geokit.errors import GeokitError
from geokit.model import Parts
from geokit.runtime import default_embed_amp
from geokit.sampling import CheckedSampler, EpochContext, StepContext, TrainEmbeddings, is_step_level, rank_slice


class EpochBatches:
    """Batch sampler of the run's DataLoader: this rank's batches of the current epoch, as
    ``(epoch, index)`` keys for :class:`PairList`."""

    def __init__(self) -> None:
        self.epoch = 1
        self.batches: list[np.ndarray] = []

    def set(self, epoch: int, batches: list[np.ndarray]) -> None:
        self.epoch, self.batches = epoch, batches

    def __iter__(self) -> Any:
        for b in self.batches:
            yield [(self.epoch, int(i)) for i in b]

    def __len__(self) -> int:
        return len(self.batches)


class SamplerFeed:
    """The run's sampler, with what it is handed (contexts, embeddings of the training set).

    :ivar before: a step-level sampler's state from before its last ``next_batch`` call (an
        interrupted step saves this one, so the resumed run asks for that batch again).
    """

    def __init__(
        self,
        config: Config,
        parts: Parts,
        sampler: CheckedSampler,
        pairs: PairList,
        *,
        world: D.World,
        device: Any,
        workers: int,
        show: bool | None,
    ) -> None:
        assert parts.context is not None  # build() makes one
        self.config, self.parts, self.sampler, self.pairs = config, parts, sampler, pairs
        self.train_set: TrainSet = parts.context.train_set
        self.world, self.device, self.workers, self.show = world, device, workers, show
        self.step_level = is_step_level(sampler)
        self.before: dict[str, Any] | None = None

    # ---------------------------------------------------------------- batches
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """A fresh epoch's global batches; empty for a step-level sampler (it hands them out
        step by step, see :meth:`step_batches`), which is told the epoch starts."""
        ctx = self.context(epoch, EpochContext)
        if self.step_level:
            start_epoch = getattr(self.sampler, "start_epoch", None)
            if start_epoch is not None:
                start_epoch(ctx)
            return []
        batches = [np.asarray(b, dtype=np.int64) for b in self.sampler.batches(ctx)]
        if not batches:
            raise GeokitError(f"sampler '{self.config.names['sampler']}' produced no batches for epoch {epoch}")
        return batches

    def step_batches(self, epoch: int, start: int, handed: list[np.ndarray], step: Callable[[], int]) -> Iterator[Any]:
        """A step-level sampler's epoch: ask for each batch right before its step (the model is
        as the step finds it), load this rank's share, yield what the DataLoader would.
        ``handed`` receives each global batch; ``step()`` is the run's step count now."""
        from concurrent.futures import ThreadPoolExecutor

        tc, world = self.config.train, self.world
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            for k in itertools.count(start):
                ctx = self.context(epoch, StepContext, step=step(), batch=k, embed_pairs=self.embed_pairs)
                self.before = self.sampler.state_dict()  # an interrupt saves this one
                batch = self.sampler.next_batch(ctx)
                if batch is None:
                    return
                batch = self.sampler.check(batch, len(self.train_set), f"batch {k} of epoch {epoch}", tc.batch_size)
                handed.append(batch)
                local = rank_slice(batch, world.rank, world.world_size)
                yield collate_pairs(list(pool.map(self.pairs.__getitem__, [(epoch, int(i)) for i in local])))

    def context(self, epoch: int, cls: type[EpochContext], **extra: Any) -> Any:
        """What a sampler receives for ``epoch`` (``StepContext`` adds the step's fields)."""
        tc, world = self.config.train, self.world
        return cls(
            epoch=epoch,
            epochs=tc.epochs,
            batch_size=tc.batch_size,
            seed=self.config.seed,
            train=self.train_set,
            dataset_name=self.parts.dataset.name,
            rank=world.rank,
            world_size=world.world_size,
            embed=self.embed_train,
            **extra,
        )

    # ---------------------------------------------------------------- embeddings for mining
    def embed_train(self) -> TrainEmbeddings:
        """The training set in evaluation mode, for similarity mining: every rank embeds its
        share of the images and the rows are all-gathered, so all ranks mine the same batches."""
        ds, tr, world = self.parts.dataset, self.train_set, self.world
        amp = self.config.train.amp if self.config.train.amp is not None else default_embed_amp(self.device)
        kw = dict(
            batch_size=self.config.eval.batch_size, device=self.device, amp=amp, workers=self.workers, show=self.show
        )

        def part(paths: Any, size: Any, view: str, desc: str) -> np.ndarray:
            return D.embed_sharded(
                world,
                self.parts.encoder,
                ds,
                paths,
                size,
                self.parts.norm_for(view),
                desc=desc,
                view=view,
                transforms=self.parts.transforms,
                seed=self.config.seed,
                **kw,
            )

        return TrainEmbeddings(
            part(tr.query_paths, ds.query_size, "query", "mine queries"),
            part(tr.reference_paths, ds.reference_size, "reference", "mine references"),
        )

    def embed_pairs(self, indices: Any) -> TrainEmbeddings:
        """Step-level mining: pairs ``indices`` (and their references, row for row) in
        evaluation mode; each rank embeds its share, every rank gets all rows."""
        tr = self.train_set
        idx = np.asarray(indices, dtype=np.int64)
        q_paths = [tr.query_paths[i] for i in idx]
        r_paths = [tr.reference_paths[j] for j in tr.pair_reference[idx]]
        return TrainEmbeddings(self._embed_subset(q_paths, "query"), self._embed_subset(r_paths, "reference"))

    def _embed_subset(self, paths: list[str], view: str) -> np.ndarray:
        ds, world = self.parts.dataset, self.world
        amp = self.config.train.amp if self.config.train.amp is not None else default_embed_amp(self.device)
        return D.embed_sharded(
            world,
            self.parts.encoder,
            ds,
            paths,
            ds.query_size if view == "query" else ds.reference_size,
            self.parts.norm_for(view),
            batch_size=self.config.eval.batch_size,
            device=self.device,
            amp=amp,
            workers=0,
            show=False,
            view=view,
            transforms=self.parts.transforms,
            seed=self.config.seed,
        )

"""One optimisation step (:class:`TrainStep`) and the batch plumbing around it: collating
pairs, the per-pair inputs a loss may declare, the non-finite-loss signal."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, cast

import numpy as np

from geokit import distributed as D
from geokit._calls import accepts
from geokit.data import BadPair, TrainSet
from geokit.errors import GeokitError
from geokit.model import encode
from geokit.runtime import autocast


def _pair_encoder_class() -> Any:
    import torch

    class PairEncoder(torch.nn.Module):
        """Both views through the shared encoder in one forward call, so DDP sees one forward
        per backward (two separate calls of a DDP module before one backward are an error)."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return encode(self.encoder, query, "query"), encode(self.encoder, reference, "reference")

    return PairEncoder


def collate_pairs(items: list[Any]) -> tuple[Any, Any, Any, list[BadPair]]:
    """Stack the readable pairs (query images, reference images, pair indices); hand the
    unreadable ones (``BadPair``) back separately."""
    import torch

    good = [x for x in items if not isinstance(x, BadPair)]
    bad = [x for x in items if isinstance(x, BadPair)]
    if not good:
        return None, None, None, bad
    return (
        torch.stack([x[0] for x in good]),
        torch.stack([x[1] for x in good]),
        torch.tensor([x[2] for x in good], dtype=torch.int64),
        bad,
    )


_PAIR_DATA = ("indices", "references", "conflicts", "columns")


def loss_inputs(loss_fn: Any, train: TrainSet | None, indices: Any) -> dict[str, Any]:
    """The per-pair keyword arguments ``loss_fn.forward`` declares (see
    ``geokit_register_losses``), for the global batch's pair ``indices`` (a CPU int64 tensor)."""
    import torch

    wanted = [k for k in _PAIR_DATA if accepts(loss_fn, k)]
    if not wanted:
        return {}
    if train is None or indices is None:
        raise GeokitError(
            f"the loss takes per-pair data ({', '.join(wanted)}) but this step has no training set or pair indices"
        )
    idx = indices.numpy()
    out: dict[str, Any] = {}
    if "indices" in wanted:
        out["indices"] = indices
    if "references" in wanted:
        out["references"] = torch.from_numpy(train.pair_reference[idx])
    if "conflicts" in wanted:
        c = train.pair_conflicts
        out["conflicts"] = None if c is None else torch.from_numpy(c[idx])
    if "columns" in wanted:
        out["columns"] = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in train.columns.items()}
    return out


def _to(x: Any, device: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if x is not None else None


class TrainStep:
    """Forward, global loss, backward, clipping and optimizer step for one (local) batch.

    :param grad_cache_chunk: pairs per chunk for gradient caching, or None for one forward.
        With caching the batch is embedded chunk by chunk without a graph, the loss and its
        gradient with respect to the embeddings are computed on the (gathered) global batch, and
        each chunk is re-run with a graph and back-propagated with its cached gradient: the same
        gradients as the plain step, with the activation memory of one chunk. Both passes over a
        chunk use the same RNG state, so stochastic depth draws the same masks in both (though
        not the masks a one-pass forward of the whole batch would draw).
    """

    def __init__(
        self,
        encoder: Any,
        loss_fn: Any,
        optimizer: Any,
        *,
        device: Any,
        amp: bool | str = False,
        scaler: Any = None,
        clip_value: float | None = None,
        grad_cache_chunk: int | None = None,
        channels_last: bool = False,
        world: D.World = D.SINGLE,
        train: TrainSet | None = None,
    ) -> None:
        import torch

        self.encoder, self.loss_fn, self.optimizer, self.train = encoder, loss_fn, optimizer, train
        self.device, self.amp, self.world = device, amp, world
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
        self.clip_value, self.chunk, self.channels_last = clip_value, grad_cache_chunk, channels_last
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.raw_pair = _pair_encoder_class()(encoder)
        self.pair, self.loss_mod = self.raw_pair, loss_fn
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Depthwise-conv weights (C, 1, k, k) get gradients whose stride on the size-1 axis
            # differs from the bucket's: the same memory layout, but DDP warns on every run.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            ids = [device.index] if device.type == "cuda" else None
            self.pair = DDP(self.raw_pair, device_ids=ids)
            if any(p.requires_grad for p in loss_fn.parameters()):  # DDP refuses a module without
                self.loss_mod = DDP(loss_fn, device_ids=ids)  # trainable parameters

    def _inputs(self, x: Any) -> Any:
        import torch

        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _pair_data(self, indices: Any, sizes: tuple[int, ...]) -> dict[str, Any]:
        """Per-pair loss inputs of the global batch: this rank's pair indices, gathered."""
        if indices is None or self.train is None or not any(accepts(self.loss_fn, k) for k in _PAIR_DATA):
            return {}  # used without a training set (the API, benchmarks): the loss's defaults
        glob = D.all_gather_rows(indices.to(self.device), sizes).cpu()
        return _to(loss_inputs(self.loss_fn, self.train, glob), self.device)

    def backward(self, query: Any, reference: Any, sizes: tuple[int, ...] | None = None, indices: Any = None) -> Any:
        """Gradients of the global loss into ``.grad`` (scaled by the AMP scaler); returns the
        detached loss. ``sizes``: the pairs every rank holds this step (default: this batch);
        ``indices``: this rank's pair indices (for losses that take per-pair data)."""
        q, r = self._inputs(query), self._inputs(reference)
        sizes = sizes or (len(q),)
        extra = self._pair_data(indices, sizes)
        self.optimizer.zero_grad(set_to_none=True)
        if self.chunk:
            return self._backward_cached(q, r, sizes, extra)
        with autocast(self.device, self.amp):
            qe, re_ = self.pair(q, r)
        rank = self.world.rank
        qa = D.all_gather_with_grad(qe.float(), sizes, rank)
        ra = D.all_gather_with_grad(re_.float(), sizes, rank)
        loss = self.loss_mod(qa, ra, **extra)
        self._check(loss)
        self.scaler.scale(loss).backward()
        return loss.detach()

    def _backward_cached(self, q: Any, r: Any, sizes: tuple[int, ...], extra: dict[str, Any]) -> Any:
        import torch

        n, chunk = len(q), cast(int, self.chunk)  # set: backward() comes here only then
        spans = [(a, min(a + chunk, n)) for a in range(0, n, chunk)] or [(0, 0)]
        rng = []
        with torch.no_grad(), autocast(self.device, self.amp):
            qs, rs = [], []
            for a, b in spans:
                rng.append(self._rng_state())
                qe, re_ = self.raw_pair(q[a:b], r[a:b])
                qs.append(qe.float())
                rs.append(re_.float())
        qa = D.all_gather_rows(torch.cat(qs), sizes).requires_grad_(True)
        ra = D.all_gather_rows(torch.cat(rs), sizes).requires_grad_(True)
        loss = self.loss_mod(qa, ra, **extra)
        self._check(loss)
        self.scaler.scale(loss).backward()
        # This rank's rows of the embedding gradient; × world size as in all_gather_with_grad,
        # so that DDP's average over ranks is the single-process sum.
        start, ws = sum(sizes[: self.world.rank]), self.world.world_size
        gq = qa.grad[start : start + n] * ws if ws > 1 else qa.grad
        gr = ra.grad[start : start + n] * ws if ws > 1 else ra.grad
        for k, (a, b) in enumerate(spans):
            self._set_rng_state(rng[k])  # the same drop-path masks as in the first pass
            last = k == len(spans) - 1
            sync = contextlib.nullcontext() if last or not self.world.distributed else self.pair.no_sync()
            with sync:
                with autocast(self.device, self.amp):
                    qe, re_ = self.pair(q[a:b], r[a:b])
                torch.autograd.backward([qe.float(), re_.float()], [gq[a:b], gr[a:b]])
        return loss.detach()

    def _rng_state(self) -> Any:
        import torch

        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_rng_state(self, state: Any) -> None:
        import torch

        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def _check(self, loss: Any) -> None:
        import torch

        if not torch.isfinite(loss):
            raise NonFiniteLoss(float(loss.detach()))

    def step(
        self, query: Any, reference: Any, lr: float, sizes: tuple[int, ...] | None = None, indices: Any = None
    ) -> float:
        """One optimisation step at learning rate ``lr``; returns the loss."""
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.backward(query, reference, sizes, indices)
        if self.clip_value is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss)


class NonFiniteLoss(Exception):
    """The loss was NaN or infinite (the engine turns it into an error naming the step)."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss {value}")
        self.value = value

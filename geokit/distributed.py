"""torch.distributed for training, evaluation and index building: process-group set-up and
tear-down, the collectives the training engine needs (an all-gather that carries gradients, row
gathers, a shared stop flag) and :func:`embed_sharded`, the one way a job embeds images over
several ranks.

``torchrun --nproc_per_node=N -m geokit train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` reads them. Without them (a plain ``geokit train``) everything here
is a no-op for a world of one. Every collective runs under the process group's timeout, so a
rank that dies or hangs makes the others fail with a :class:`DistributedError` instead of
waiting for ever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from geokit.errors import GeokitError


class DistributedError(GeokitError):
    """A collective failed: another rank died, hung past the timeout, or the network broke."""


@dataclass(frozen=True)
class World:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed
    timeout_s: float = 1800.0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``(0, 1, 0)`` without it)."""

    def read(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise GeokitError(f"environment variable {name}={raw!r} is not an integer") from None

    world_size = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    local_rank = read("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise GeokitError(f"RANK={rank} does not fit WORLD_SIZE={world_size}")
    return rank, world_size, local_rank


def setup(device_name: str = "auto", timeout_s: float = 1800.0) -> tuple[World, Any]:
    """Join the process group when launched by torchrun; returns ``(world, device)``.

    GPU ranks use NCCL on ``cuda:LOCAL_RANK``; CPU ranks use gloo. ``device_name`` is
    ``train.device`` (``auto``, ``cpu``, ``cuda``).
    """
    import datetime

    import torch
    import torch.distributed as dist

    from geokit.runtime import select_device

    rank, world_size, local_rank = env_world()
    device = select_device(device_name)
    if world_size == 1:
        return World(timeout_s=timeout_s), device
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GeokitError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA "
                "devices are visible; use --nproc_per_node ≤ the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
            )
        except Exception as exc:  # noqa: BLE001 - any failure to join is one error
            raise DistributedError(
                f"rank {rank}: could not join the {backend} process group of {world_size} ranks ({exc})"
            ) from None
    return World(rank, world_size, local_rank, backend, timeout_s), device


def teardown(world: World, *, clean: bool) -> None:
    """Leave the process group. After a clean run every rank meets at a barrier first (without
    it gloo sometimes aborts at exit); after an error nobody waits for ranks that may be gone."""
    if not world.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a failed collective (dead peer, timeout, broken link)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text
        for s in (
            "gloo",
            "Gloo",
            "NCCL",
            "Connection closed",
            "Connection reset",
            "Broken pipe",
            "timed out",
            "Timed out",
            "ProcessGroup",
        )
    )


RESUME_ADVICE = "The last checkpoint is intact: re-run the same command to resume."


def comm_error(
    world: World, what: str, exc: BaseException, advice: str = RESUME_ADVICE, timeout_key: str = "train.dist_timeout"
) -> DistributedError:
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return DistributedError(
        f"rank {world.rank} of {world.world_size}: {what} failed ({first}). Another rank most "
        f"likely died or hung (timeout {world.timeout_s:g} s, {timeout_key}); see its log. {advice}"
    )


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------ collectives


def _autograd_gather() -> Any:
    import torch

    class GatherWithGrad(torch.autograd.Function):
        """Concatenate every rank's rows; gradients flow back to this rank's rows.

        Every rank computes the same loss on the gathered batch, so the incoming gradient is the
        same on every rank and this rank's share is just its rows. DDP then *averages* encoder
        gradients over ranks, while the single-process gradient is their *sum*: the backward
        multiplies by the world size so that the average is exactly that sum.
        """

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
            ctx.sizes, ctx.rank = sizes, rank
            return _gather_padded(x.contiguous(), sizes)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None, None]:
            start = sum(ctx.sizes[: ctx.rank])
            share = grad[start : start + ctx.sizes[ctx.rank]] * len(ctx.sizes)
            return share, None, None

    return GatherWithGrad


def _gather_padded(x: Any, sizes: tuple[int, ...]) -> Any:
    """All-gather rows of ``x`` when ranks hold different row counts (``sizes``)."""
    import torch
    import torch.distributed as dist

    top = max(sizes)
    if len(x) < top:
        x = torch.cat([x, x.new_zeros((top - len(x), *x.shape[1:]))])
    out = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(out, x)
    return torch.cat([t[:n] for t, n in zip(out, sizes)])


_GATHER: Any = None


def all_gather_with_grad(x: Any, sizes: tuple[int, ...], rank: int) -> Any:
    """Rows of every rank, in rank order, differentiable (see ``GatherWithGrad``)."""
    global _GATHER
    if len(sizes) == 1:
        return x
    if _GATHER is None:
        _GATHER = _autograd_gather()
    return _GATHER.apply(x, tuple(int(s) for s in sizes), rank)


def all_gather_rows(x: Any, sizes: tuple[int, ...]) -> Any:
    """Rows of every rank, in rank order (no gradient)."""
    if len(sizes) == 1:
        return x
    return _gather_padded(x.detach().contiguous(), tuple(int(s) for s in sizes))


def exchange_step_info(world: World, local_rows: int, stop: bool, device: Any) -> tuple[tuple[int, ...], bool]:
    """One small all-gather per step: every rank's batch rows, and whether any rank must stop
    (a signal arrived), so all ranks stop after the same step."""
    if not world.distributed:
        return (local_rows,), stop
    import torch
    import torch.distributed as dist

    mine = torch.tensor([local_rows, int(stop)], dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(world.world_size)]
    dist.all_gather(out, mine)
    both = torch.stack(out).cpu()
    return tuple(int(v) for v in both[:, 0]), bool(both[:, 1].any())


def gather_numpy_rows(world: World, rows: np.ndarray, device: Any) -> np.ndarray:
    """Concatenate every rank's ``(n_r, D)`` float32 rows in rank order (each rank gets all)."""
    if not world.distributed:
        return rows
    import torch

    sizes, _ = exchange_step_info(world, len(rows), False, device)
    t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device)
    if len(t) == 0:
        t = t.reshape(0, rows.shape[1] if rows.ndim == 2 else 0)
    return all_gather_rows(t, sizes).cpu().numpy()


# ------------------------------------------------------------------------------ sharded embedding


def embed_sharded(
    world: World,
    encoder: Any,
    dataset: Any,
    paths: Any,
    size: Any,
    norm: Any,
    *,
    device: Any = None,
    show: bool | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """:func:`geokit.embedding.embed_paths` over every rank: each rank embeds its contiguous share
    of ``paths`` (:func:`geokit.sampling.rank_slice`) and the rows are all-gathered in rank
    order, so every rank returns the ``(N, D)`` rows one process would compute (each image is
    embedded alone of its batch in inference mode; rows agree to float tolerance; the shares
    pass their ``offset``, so random evaluation transforms make the same choice per image). Progress is
    shown on rank 0 only. Every rank must call it with the same ``paths``; a rank that died or
    hangs makes the others fail after the process-group timeout instead of waiting for ever
    (the caller turns that into :func:`comm_error`). Without a process group it is
    ``embed_paths``. Other keyword arguments go to ``embed_paths`` unchanged."""
    from geokit.embedding import embed_paths
    from geokit.sampling import rank_slice

    if not world.distributed:
        return embed_paths(encoder, dataset, paths, size, norm, device=device, show=show, **kwargs)
    device = device or next(encoder.parameters()).device
    idx = rank_slice(np.arange(len(paths)), world.rank, world.world_size)
    rows = embed_paths(
        encoder,
        dataset,
        [paths[int(i)] for i in idx],
        size,
        norm,
        device=device,
        show=show if world.is_main else False,
        offset=int(idx[0]) if len(idx) else 0,
        **kwargs,
    )
    return gather_numpy_rows(world, rows, device)

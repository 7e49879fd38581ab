"""geokit's hook specifications: the reference documentation for plugin authors.

A plugin is a module (or object) with functions named after these hooks, marked with
``geokit.hookimpl``, and made known through the ``geokit`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.geokit]
    my_sampler = "my_package.sampler"

Every component kind has one *registration hook* that receives a :class:`~geokit.registry.Registry`.
The plugin adds ``name -> factory`` entries to it, each with a pydantic model for the component's
options (the keys users write under that section of the config). Registration is cheap and
happens on every ``geokit`` start, so keep torch/timm imports inside the factories.

Names are unique across all plugins: registering a name that another plugin already holds is an
error naming both, unless exactly one of them passes ``replace=True`` (then that one wins,
whatever the load order, and ``geokit plugins`` shows it as replacing the other).

Hooks are called with keyword arguments; an implementation may accept fewer arguments than the
spec lists. Functions named ``geokit_*`` that match no spec are reported (with the closest valid
name) and the plugin is not loaded, so a typo never goes unnoticed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # keep this module import-cheap
    import click

    from geokit.registry import Registry

PROJECT = "geokit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- components


@hookspec
def geokit_register_encoders(registry: Registry) -> None:
    """Register encoders: the network that embeds both views.

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` — or ``factory(options, context)`` when it declares a parameter named
    ``context`` (a :class:`geokit.model.BuildContext`: per-view input sizes, view names, and on
    demand the training set's size and number of location classes) — returns a
    ``torch.nn.Module``:

    - ``forward(images)`` or ``forward(images, view)``: ``images`` is a float tensor
      ``(B, 3, H, W)``, normalised with the encoder's ``mean``/``std`` for that view; returns
      ``(B, D)`` embeddings (not normalised: retrieval and losses L2-normalise). When ``forward``
      declares a parameter named ``view``, every path that embeds (training, validation,
      evaluation, mining, index, locate) passes ``view="query"`` or ``view="reference"``, so an
      encoder may keep one branch per view (separate weights); without it the same weights embed
      both views. Image sizes vary per view, per dataset and with size-changing transforms; the
      encoder must accept any size it is given.
    - ``embedding_dim: int`` (D).
    - ``mean`` and ``std``: 3-tuples of floats in 0..1 units for both views, or mappings
      ``{"query": (r, g, b), "reference": (r, g, b)}`` for per-view normalisation. Checkpoint
      records store them as given.

    Options named ``pretrained`` and ``weights`` are taken to choose only the *initial* weights:
    when a checkpoint supplies the weights (``geokit evaluate --checkpoint``, ``geokit index``),
    geokit builds the encoder with ``pretrained=False`` and ``weights=None``, so nothing is
    downloaded or read for weights that are then replaced.

    Initial weights may hold tensors that belong to the loss (Sample4Geo's released checkpoints
    keep the temperature ``logit_scale`` beside the network). An encoder that finds some exposes
    them as ``loss_state: dict[str, Tensor]``; :func:`geokit.model.build` loads each one into the
    built loss where the loss's ``state_dict()`` has the same key and shape (and logs it), and
    warns in one line about the keys it cannot place. To read such files, use
    ``geokit.checkpoint.read_foreign_weights(path)``: it refuses pickles that would run code,
    removes the ``module.``/``model.``/``encoder.`` wrappers and returns the network's state dict
    (``.model``) and the tensors beside it (``.extra``, what ``loss_state`` should hold).

    Example::

        @geokit.hookimpl
        def geokit_register_encoders(registry):
            registry.add("tiny", make_tiny, options=TinyOptions, summary="a 2-layer CNN")

    Check it with ``geokit.testing.check_encoder`` (it checks each view's branch when
    ``forward`` takes ``view``).
    """


@hookspec
def geokit_register_losses(registry: Registry) -> None:
    """Register losses: what training minimises.

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` or ``factory(options, context)``: the context (see
    ``geokit_register_encoders``) also carries the encoder's ``embedding_dim``, and
    ``num_classes`` for classification heads. Returns a ``torch.nn.Module`` whose
    ``forward(query_emb, reference_emb)`` takes two ``(B, D)`` float32 tensors where row *i* of
    each is a matching pair and every other row is a negative, and returns a scalar tensor.

    Per-pair data (opt-in): ``forward`` may also declare any of these keyword parameters, and
    receives exactly those it declares (all describe the same *global* batch, row for row):

    - ``indices``: ``(B,)`` int64 training-pair indices (rows of the ``TrainSet``);
    - ``references``: ``(B,)`` int64 reference indices (``TrainSet.pair_reference[indices]``),
      also the location class of each pair for classification losses;
    - ``conflicts``: ``(B, S)`` int64 references that are near-positives of each pair (−1
      padded, ``TrainSet.pair_conflicts``), or None;
    - ``columns``: ``dict[str, Tensor]`` of the training set's per-pair columns
      (``TrainSet.columns``, e.g. the extra numeric CSV columns of the ``pairs`` dataset), each
      ``(B, ...)`` on the embeddings' device.

    They are derived from the batch's pair indices, which the engine gathers across ranks like
    the embeddings; nothing depends on DataLoader workers or call order. Pairs whose images
    were unreadable (``train.bad_images: skip``) are absent from both the embeddings and these.

    Parameters (e.g. a learnable temperature, a classifier) are optimised with the encoder and
    saved in the checkpoint under ``loss.``. Under distributed training the engine gathers the
    global batch (with gradients) before calling the loss, so a loss never needs to know about
    ranks.

    Check it with ``geokit.testing.check_loss`` (it also passes per-pair data when the loss
    declares it).
    """


@hookspec
def geokit_register_samplers(registry: Registry) -> None:
    """Register samplers: how an epoch's pairs are grouped into batches.

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` (or ``factory(options, context)``) returns an object with either

    - ``batches(ctx: geokit.sampling.EpochContext) -> list[numpy.ndarray]``: the ordered *global*
      batches of training-pair indices for epoch ``ctx.epoch`` (1-based), listed at the epoch's
      start; or
    - ``next_batch(ctx: geokit.sampling.StepContext) -> numpy.ndarray | None`` (a *step-level*
      sampler): called by the engine right before each step, with the model as it is at that
      step; returns the next global batch, or None when the epoch is over. ``ctx.embed_pairs``
      embeds any subset of the training set on demand (for per-step mining), ``ctx.step`` and
      ``ctx.batch`` say where the epoch is. For a step-level sampler ``state_dict()`` is saved
      after every checkpointed step, so it must hold whatever the next call depends on (used
      pairs, generator state): an interrupted run then resumes with the same batches.

    Rules every sampler keeps: valid indices, each pair at most once per epoch, never two pairs
    with the same reference in one batch (declared conflicts, ``TrainSet.pair_conflicts``, may
    share a batch; a sampler may keep them apart as an option), and the same batches for the
    same seed, epoch and state. ``ctx`` carries the training-set metadata (``ctx.train``:
    references, GPS, conflicts, per-pair columns), ``batch_size``, ``seed``,
    ``epoch``/``epochs``, ``rank``/``world_size`` and ``ctx.embed()``, which embeds the whole
    training set through the evaluation path (for similarity mining; computed on demand). Under
    DDP every rank receives the same global batches and the engine gives each rank its slice.
    Both kinds also need ``state_dict() -> dict`` and ``load_state_dict(state)``: whatever must
    survive a resume (JSON values and numpy arrays).

    Check it with ``geokit.testing.check_sampler``.
    """


@hookspec
def geokit_register_datasets(registry: Registry) -> None:
    """Register datasets: training pairs and an evaluation protocol.

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``. The options
        model should have ``root`` (the dataset folder) and ``query_size``/``reference_size``
        (``[height, width]``) with the dataset's recipe defaults.

    ``factory(options)`` returns a :class:`geokit.data.CrossViewDataset`: ``train_set()`` gives the
    training pairs (query image paths, unique reference paths, the pair→reference map, optional
    GPS, near-positive conflicts and per-pair ``columns`` for the loss), ``eval_set(split)`` gives
    the protocol (query and reference sets; which references match which query, as labels or as
    an explicit, optionally weighted :class:`geokit.data.MatchTable`; optional semi-positives
    and GPS), and ``augment_pair(query, reference, rng)`` applies pair-consistent training
    augmentation to uint8 HWC arrays at the dataset's sizes; it must return arrays of the same
    shapes (size changes belong to ``transforms``). Raise ``geokit.GeokitError`` naming the file
    and line for anything wrong on disk.

    Check it with ``geokit.testing.check_dataset``.
    """


@hookspec
def geokit_register_transforms(registry: Registry) -> None:
    """Register image transforms: the config's top-level ``transforms`` list.

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` (or ``factory(options, context)``) returns an object with

    - ``__call__(image, *, view, training, rng) -> image``: ``image`` is uint8 HWC RGB; ``view``
      is ``"query"`` or ``"reference"``; ``training`` is False on every evaluation path
      (validation, evaluate, mining, index); ``rng`` is a ``numpy.random.Generator`` seeded from
      (seed, epoch, pair) in training and from (seed, image position) in evaluation, so a
      random choice is redrawn per sample in training and fixed per image in evaluation. It may
      change the image size; it must return uint8 HWC.
    - optionally ``output_size(size, view) -> size``: the ``(height, width)`` it returns for an
      input of ``size``, so that the encoder's build context and size checks see the real input
      sizes. Without it the size is taken as unchanged.

    Transforms run in config order, after the dataset's own ``augment_pair`` in training and
    after decoding and resizing in evaluation, before normalisation. Datasets keep their
    pair-consistent augmentation; transforms act on one image at a time.

    Check it with ``geokit.testing.check_transform``.
    """


@hookspec
def geokit_register_metrics(registry: Registry) -> None:
    """Register metrics: extra numbers in every metrics JSON (evaluate, validation, index).

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` returns an object with ``compute(result) -> dict[str, float]``, where
    ``result`` is a :class:`geokit.engine.evaluation.Retrieval`: the protocol (``eval_set``: GPS,
    matches), the L2-normalised embeddings and the top-k references of every query (``topk``,
    ``topk_scores``, from the same exact search as the core metrics, after re-ranking). It may
    define ``applies(eval_set) -> bool`` (default: always). The config's top-level ``metrics``
    list names the metrics to compute; without it every registered metric that applies is
    computed. Keys must not collide with the core metrics (``R@k``, ``R@1%``, ``AP``, ...).

    Check it with ``geokit.testing.check_metric``.
    """


@hookspec
def geokit_register_rerankers(registry: Registry) -> None:
    """Register re-rankers: the config's top-level ``rerankers`` list (off when empty).

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` returns an object with
    ``__call__(query, reference) -> (query, reference)``: L2-normalised float32 numpy arrays
    ``(Q, D)`` and ``(R, D)`` in, new embeddings out (normalised again by the caller). Query
    expansion and database-side augmentation are of this form; they run, in config order,
    before the exact metric scan in evaluation and validation. ``index build`` applies the
    reference side (the returned ``reference`` with an empty query set) and ``locate`` the query
    side against the stored gallery when the index is exact.

    Check it with ``geokit.testing.check_reranker``.
    """


# --------------------------------------------------------------------------- command line


@hookspec
def geokit_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``geokit`` command line.

    :param cli: the root ``click.Group``; call ``cli.add_command(cmd)`` or decorate with
        ``@cli.command()``. Import heavy modules inside the command body, not at module level:
        this hook runs on every ``geokit`` start.
    """


KINDS: tuple[str, ...] = ("encoder", "loss", "sampler", "dataset")
"""The component kinds a run config has one section of (``name`` plus options)."""

LIST_KINDS: dict[str, str] = {"transform": "transforms", "metric": "metrics", "reranker": "rerankers"}
"""Component kinds a run config lists (top-level key -> list of sections), in build order."""

ALL_KINDS: tuple[str, ...] = (*KINDS, *LIST_KINDS)
"""Every component kind, in the order ``geokit plugins`` lists them."""

REGISTRATION_HOOKS: dict[str, str] = {
    "encoder": "geokit_register_encoders",
    "loss": "geokit_register_losses",
    "sampler": "geokit_register_samplers",
    "dataset": "geokit_register_datasets",
    "transform": "geokit_register_transforms",
    "metric": "geokit_register_metrics",
    "reranker": "geokit_register_rerankers",
}

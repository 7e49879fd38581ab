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

    ``factory(options)`` receives the validated options model and returns a ``torch.nn.Module``:

    - ``forward(images)``: ``images`` is a float tensor ``(B, 3, H, W)``, normalised with the
      encoder's own ``mean``/``std``; returns ``(B, D)`` embeddings (not normalised: retrieval and
      losses L2-normalise). The same module embeds queries and references, so weights are shared.
      Image sizes vary per view and per dataset; the encoder must accept any size it is given.
    - ``embedding_dim: int`` (D), ``mean`` and ``std``: 3-tuples of floats in 0..1 units.

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

    Check it with ``geokit.testing.check_encoder``.
    """


@hookspec
def geokit_register_losses(registry: Registry) -> None:
    """Register losses: what training minimises.

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` returns a ``torch.nn.Module`` whose ``forward(query_emb, reference_emb)``
    takes two ``(B, D)`` tensors where row *i* of each is a matching pair and every other row is a
    negative, and returns a scalar tensor. Its parameters (e.g. a learnable temperature) are
    optimised with the encoder and saved in the checkpoint under ``loss.``. Under distributed
    training the engine gathers the global batch (with gradients) before calling the loss, so a
    loss never needs to know about ranks.

    Check it with ``geokit.testing.check_loss``.
    """


@hookspec
def geokit_register_samplers(registry: Registry) -> None:
    """Register samplers: how an epoch's pairs are grouped into batches.

    :param registry: call ``registry.add(name, factory, options=Model, summary=...)``.

    ``factory(options)`` returns an object with

    - ``batches(ctx: geokit.sampling.EpochContext) -> list[numpy.ndarray]``: the ordered *global*
      batches of training-pair indices for epoch ``ctx.epoch`` (1-based). Rules every sampler
      keeps: valid indices, each pair at most once per epoch, never two pairs with the same
      reference (or a declared conflict, ``TrainSet.pair_conflicts``) in one batch, and the same
      batches for the same seed and epoch. ``ctx`` carries the training-set metadata
      (``ctx.train``: references, GPS, conflicts), ``batch_size``, ``seed``, ``epoch``/``epochs``,
      ``rank``/``world_size`` and ``ctx.embed()``, which embeds the training set through the
      evaluation path (for similarity mining; it is computed on demand). Under DDP every rank
      receives the same global batches and the engine gives each rank its slice.
    - ``state_dict() -> dict`` and ``load_state_dict(state)``: whatever must survive a resume
      (JSON values and numpy arrays).

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
    GPS and batch conflicts), ``eval_set(split)`` gives the protocol (query and reference sets,
    labels that say which references match which query, optional semi-positives and GPS), and
    ``augment_pair(query, reference, rng)`` applies pair-consistent training augmentation. Raise
    ``geokit.GeokitError`` naming the file and line for anything wrong on disk.

    Check it with ``geokit.testing.check_dataset``.
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
"""The component kinds, in the order ``geokit plugins`` lists them."""

REGISTRATION_HOOKS: dict[str, str] = {
    "encoder": "geokit_register_encoders",
    "loss": "geokit_register_losses",
    "sampler": "geokit_register_samplers",
    "dataset": "geokit_register_datasets",
}

"""Checkpoints, one owner: one format (safetensors tensors + a JSON record), no pickle anywhere.

- ``model.safetensors``: the shareable weights (``encoder.*``, ``loss.*``) with the record in the
  safetensors metadata under ``geokit`` (encoder config, per-view input sizes, mean/std,
  embedding dim, dataset, metrics, versions).
- Resume state (optimizer, RNG, sampler, epoch/step) is kept apart from the weights, as a
  safetensors file whose nested structure is a JSON skeleton in its metadata.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a crash
or a full disk never leaves a half-written checkpoint behind.

Where the code lives: records (write, read, validate) in ``_records``; files (atomic writes,
weights, resume state) in ``_files``; state-dict key prefixes in ``_keys``; weights made outside
geokit in ``_foreign``; rebuilding an encoder from a checkpoint in ``_encoder``.
"""

from geokit.checkpoint._encoder import Encoder, encoder_meta, fingerprint, load_encoder
from geokit.checkpoint._files import (
    atomic_write,
    atomic_write_text,
    load_model_weights,
    load_module_strict,
    load_state,
    load_weights,
    model_tensors,
    save_state,
    save_weights,
)
from geokit.checkpoint._foreign import ForeignWeights, normalise_state, read_foreign_weights, read_tensor_file
from geokit.checkpoint._keys import add_prefix, drop_prefix, load_at_prefixes, strip_prefix
from geokit.checkpoint._records import (
    MAX_EMBEDDING_DIM,
    MAX_INPUT_SIDE,
    RECORD_FORMAT,
    RECORD_KEY,
    RECORD_KEYS,
    model_record,
    norm_record,
    read_record,
    validate_record,
)

__all__ = [
    "MAX_EMBEDDING_DIM",
    "MAX_INPUT_SIDE",
    "RECORD_FORMAT",
    "RECORD_KEY",
    "RECORD_KEYS",
    "Encoder",
    "ForeignWeights",
    "add_prefix",
    "atomic_write",
    "atomic_write_text",
    "drop_prefix",
    "encoder_meta",
    "fingerprint",
    "load_at_prefixes",
    "load_encoder",
    "load_model_weights",
    "load_module_strict",
    "load_state",
    "load_weights",
    "model_record",
    "model_tensors",
    "norm_record",
    "normalise_state",
    "read_foreign_weights",
    "read_record",
    "read_tensor_file",
    "save_state",
    "save_weights",
    "strip_prefix",
    "validate_record",
]

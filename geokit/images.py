"""Image decoding and resizing, the one path every dataset, engine and command uses.

Training, evaluation, ``geokit index`` and ``geokit locate`` all read images through
:func:`load_image` (via :func:`geokit.data.load_image` / ``CrossViewDataset.load_image``), so
they see the same pixels. Two decoders:

``opencv`` (default)
    The released Sample4Geo path, bit for bit: OpenCV decode (EXIF orientation applied), RGB,
    ``cv2.resize(..., INTER_LINEAR_EXACT)``. Slightly faster than the original (1.02-1.09x per
    image): the file is decoded straight to RGB, where the original converts BGR to RGB on the
    full-size image.
``pil``
    geokit's earlier loader: Pillow decode (now with EXIF orientation), anti-aliased bilinear
    resize (``Image.BILINEAR``). Slightly softer pixels; PSNR 35-48 dB against ``opencv``; about
    2x slower.

Before anything is decoded the header is read and an image over ``max_pixels`` is refused with a
:class:`GeokitError` naming the file (a few-hundred-byte PNG can declare 10^10 pixels), so it is
skipped like any unreadable image under ``train.bad_images: skip``. 16-bit, palette, grey,
1-bit, LA/RGBA (alpha dropped, not composited) and CMYK files all become 8-bit RGB; both decoders
map 16-bit values by ``v >> 8``.

``reduced_jpeg`` (off by default) decodes a JPEG at 1/2, 1/4 or 1/8 of its size inside the
decoder (``IMREAD_REDUCED_*`` / Pillow ``draft``) when the result is still at least the target
size, then resizes. 1.3-1.5x faster for VIGOR and CVACT images (entropy decoding is not
reduced); the pixels are a box-filtered version of the full decode (PSNR 41-49 dB), not the
paper's (BENCHMARKS.md, "Image loader").

Options come from the run config's ``images:`` section (:mod:`geokit.config` applies it with
:func:`configure` when it resolves a config; a config writes it only when it differs from the
defaults), else from ``GEOKIT_IMAGES_DECODER``, ``GEOKIT_IMAGES_MAX_PIXELS`` and
``GEOKIT_IMAGES_REDUCED_JPEG``, else the defaults. ``geokit locate`` and ``geokit index build``
load a checkpoint and decode as it was trained (:func:`apply_record`: its recorded options,
except those set in the environment). :func:`configure` exports the env variables, so
DataLoader workers started with ``spawn`` decode the same way.

(About 440 lines on purpose: options, checks and both decoders are one path that every reader
shares; header parsing, which needs none of it, lives in :mod:`geokit._image_header`.)
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geokit._image_header import PNG_MAGIC, ImageInfo, probe_jpeg, probe_png
from geokit.errors import GeokitError

Size = tuple[int, int]  # (height, width)

#: File name endings taken for images when a folder is listed (reference galleries, benchmark
#: folders); what a file holds is decided by its header, not by this list.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")

#: Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``), about 13,400 x 13,400: no image
#: Pillow decoded before is refused by default.
DEFAULT_MAX_PIXELS = 178_956_970
#: The defaults when no GEOKIT_IMAGES_* variable is set (a config at these omits ``images:``).
BUILTIN_IMAGE_OPTIONS: dict[str, Any] = {"decoder": "opencv", "max_pixels": DEFAULT_MAX_PIXELS, "reduced_jpeg": False}
ENV = {
    "decoder": "GEOKIT_IMAGES_DECODER",
    "max_pixels": "GEOKIT_IMAGES_MAX_PIXELS",
    "reduced_jpeg": "GEOKIT_IMAGES_REDUCED_JPEG",
}


def _env_defaults() -> dict[str, Any]:
    """Options the user (or the parent process) set in the environment, read once at import."""
    out: dict[str, Any] = {}
    for key, var in ENV.items():
        raw = os.environ.get(var, "").strip()
        if raw:
            out[key] = raw
    return out


_ENV_DEFAULTS = _env_defaults()
#: Set by :func:`configure` next to the variables it exports: a child process then knows they
#: came from its parent's config (defaults for its workers), not from the user's shell.
SOURCE_ENV = "GEOKIT_IMAGES_SET_BY"


def _user_env() -> dict[str, Any]:
    """The GEOKIT_IMAGES_* values the user chose (not exported by a parent geokit process)."""
    return {} if os.environ.get(SOURCE_ENV) == "geokit" else _ENV_DEFAULTS


def _default(key: str, fallback: Any) -> Any:
    return _ENV_DEFAULTS.get(key, fallback)


class ImageOptions(BaseModel):
    """``images:`` config section: how image files are decoded and resized."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    decoder: Literal["opencv", "pil"] = Field(
        default_factory=lambda: _default("decoder", BUILTIN_IMAGE_OPTIONS["decoder"]),
        description="opencv: the released Sample4Geo pixels (INTER_LINEAR_EXACT resize), fastest; "
        "pil: Pillow with anti-aliased bilinear resize (geokit's earlier behaviour)",
    )
    max_pixels: int = Field(
        default_factory=lambda: _default("max_pixels", BUILTIN_IMAGE_OPTIONS["max_pixels"]),
        ge=1,
        le=2**40,
        description="refuse images whose header declares more pixels (decompression bombs) before decoding them",
    )
    reduced_jpeg: bool = Field(
        default_factory=lambda: _default("reduced_jpeg", BUILTIN_IMAGE_OPTIONS["reduced_jpeg"]),
        description="decode JPEGs at 1/2, 1/4 or 1/8 size in the decoder when the target allows "
        "(1.3-1.5x faster on VIGOR and CVACT images; slightly different pixels)",
    )


_options: ImageOptions | None = None


def current() -> ImageOptions:
    """The options this process decodes with."""
    global _options
    if _options is None:
        try:
            _options = ImageOptions()
        except ValidationError as exc:  # a bad GEOKIT_IMAGES_* value
            err = exc.errors()[0]
            var = ENV.get(str(err["loc"][0]) if err["loc"] else "", "GEOKIT_IMAGES_*")
            raise GeokitError(f"environment variable {var}={os.environ.get(var, '')[:40]!r}: {err['msg']}") from None
    return _options


def configure(options: ImageOptions | None) -> ImageOptions:
    """Make ``options`` (None: the defaults) this process's image options, and export them as
    ``GEOKIT_IMAGES_*`` so worker processes started later (spawn, subprocesses) use them too."""
    global _options
    _options = options if options is not None else ImageOptions()
    os.environ[ENV["decoder"]] = _options.decoder
    os.environ[ENV["max_pixels"]] = str(_options.max_pixels)
    os.environ[ENV["reduced_jpeg"]] = "1" if _options.reduced_jpeg else "0"
    os.environ[SOURCE_ENV] = "geokit"
    return _options


class ImageError(GeokitError):
    """An image that cannot be used; ``reason`` is the message without the file name."""

    def __init__(self, path: str | Path, reason: str | None = None, *, refused: bool = False):
        if reason is None:  # rebuilt from its message alone (unpickling, DataLoader workers)
            super().__init__(str(path))
            self.path, self.reason = "", str(path)
            return
        self.path, self.reason = str(path), reason
        super().__init__(f"image {path} refused: {reason}" if refused else f"cannot decode image {path}: {reason}")


_USER_ENV = _user_env()


def apply_record(record: Any, source: str = "checkpoint") -> ImageOptions:
    """Decode as the checkpoint was trained: the ``images`` options in its record's config (a
    config writes them only when they differ from the defaults) become this process's, except
    those the user set with ``GEOKIT_IMAGES_*``. For ``geokit locate`` and ``geokit index build``,
    which run from a checkpoint without a config."""
    config = record.get("config") if isinstance(record, dict) else None
    recorded = config.get("images") if isinstance(config, dict) else None
    if not isinstance(recorded, dict) or not recorded:
        return current()
    user = _USER_ENV
    fields = {k: v for k, v in recorded.items() if k not in user}
    try:
        options = ImageOptions(**{**current().model_dump(), **fields})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise GeokitError(f"{source}: the record's config.images.{where} is invalid: {err['msg']}") from None
    return configure(options)


# ------------------------------------------------------------------------------ headers


def probe(data: bytes, path: str | Path = "<bytes>") -> tuple[ImageInfo, bool]:
    """Read the header of an encoded image: its :class:`ImageInfo` and whether the data looks
    complete. Decodes nothing, so a decompression bomb costs nothing here."""
    if data[:3] == b"\xff\xd8\xff":
        info, complete = probe_jpeg(data)
        if info is None:
            raise ImageError(
                path, f"a JPEG file without a valid frame header ({len(data):,} bytes; truncated or corrupt)"
            )
        return info, complete
    if data[:8] == PNG_MAGIC:
        png = probe_png(data)
        if png is None:
            raise ImageError(path, f"a PNG file without its IHDR header ({len(data):,} bytes; truncated or corrupt)")
        return png, True
    return _probe_pil(data, path), True


def _pil() -> Any:
    from PIL import Image

    if not getattr(_pil, "ready", False):
        import warnings

        # geokit enforces its own limit (max_pixels) from the header; Pillow's warning between
        # its two thresholds would only repeat it.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _pil.ready = True  # type: ignore[attr-defined]
    return Image


def _probe_pil(data: bytes, path: str | Path) -> ImageInfo:
    Image = _pil()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return ImageInfo(str(im.format), int(im.size[0]), int(im.size[1]))
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"{exc}; a decompression bomb or an unusually large image", refused=True) from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for unknown data
        head = data[:8]
        raise ImageError(
            path,
            "not an image format geokit can read (JPEG, PNG, BMP, TIFF, WebP, "
            f"GIF, ...); the file starts with {head!r} ({len(data):,} bytes)",
        ) from None


def check_pixels(info: ImageInfo, path: str | Path, limit: int) -> None:
    """Refuse an image whose header declares more than ``limit`` pixels (or zero)."""
    if info.width <= 0 or info.height <= 0:
        raise ImageError(path, f"its {info.format} header declares an empty image ({info.width}x{info.height})")
    if info.pixels > limit:
        raise ImageError(
            path,
            f"its {info.format} header declares {info.width}x{info.height} = {info.pixels:,} "
            f"pixels, over the limit of {limit:,} (images.max_pixels); a decompression bomb or an "
            "unusually large image (raise images.max_pixels if you trust it)",
            refused=True,
        )


# ------------------------------------------------------------------------------ decoding


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; a missing or unreadable file is a :class:`GeokitError` naming it."""
    try:
        with open(path, "rb", buffering=0) as f:  # one read into one bytes object
            data = f.readall()
    except FileNotFoundError:
        raise GeokitError(f"image not found: {path}") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read the file: {exc.strerror or exc}") from None
    if not data:
        raise ImageError(path, "the file is empty (0 bytes)")
    return data


def _reduction(info: ImageInfo, size: Size) -> int:
    """Largest JPEG scale denominator (2, 4, 8) that keeps the decode at least ``size``."""
    th, tw = size
    if info.orientation >= 5:  # stored transposed: compare with the stored axes
        th, tw = tw, th
    for f in (8, 4, 2):
        if -(-info.width // f) >= tw and -(-info.height // f) >= th:
            return f
    return 1


def _corrupt(path: str | Path, info: ImageInfo, data: bytes, decoder: str, why: str = "") -> ImageError:
    return ImageError(
        path,
        f"the {info.format} data ({len(data):,} bytes, {info.width}x{info.height}) "
        f"is truncated or corrupt{' (' + why + ')' if why else ''}; {decoder} "
        "could not decode it",
    )


_cv2: Any = None


def _opencv() -> Any:
    global _cv2
    if _cv2 is None:
        import cv2

        if "OPENCV_LOG_LEVEL" not in os.environ:  # geokit reports broken files itself, once
            try:
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            except AttributeError:
                pass
        _cv2 = cv2
    return _cv2


def _decode_opencv(
    data: bytes, info: ImageInfo, size: Size | None, reduced: bool, path: str | Path, limit: int
) -> np.ndarray:
    """RGB uint8, EXIF orientation applied, resized with INTER_LINEAR_EXACT when ``size``."""
    cv2 = _opencv()
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10/5: RGB from the decoder
    colour = rgb_flag if rgb_flag is not None else cv2.IMREAD_COLOR
    buf = np.frombuffer(data, np.uint8)
    img = None
    if reduced and size is not None and info.format == "JPEG":
        f = _reduction(info, size)
        if f > 1:
            base = {
                2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
            }[f]
            img = cv2.imdecode(buf, base | colour)
            if img is not None and (img.ndim != 3 or img.shape[0] < size[0] or img.shape[1] < size[1]):
                img = None  # an unexpected orientation or shape: decode at full size instead
    if img is None:
        img = cv2.imdecode(buf, colour)
    if img is None:
        if info.format in ("JPEG", "PNG"):
            raise _corrupt(path, info, data, "OpenCV")
        # Formats this OpenCV build cannot read (e.g. GIF): Pillow decodes, OpenCV resizes.
        img, rgb = _decode_pil_array(data, path, info, limit), True
    else:
        rgb = rgb_flag is not None
    if size is not None and img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR_EXACT)
    if not rgb:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # after the resize: fewer pixels, same values
    return img


def _rgb_image(im: Any) -> Any:
    """A Pillow image of any mode as 8-bit RGB (16-bit as ``v >> 8``, like OpenCV)."""
    Image = _pil()
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(im)
        a = np.clip(a, 0, 255) if im.mode == "F" else np.clip(a.astype(np.int64) >> 8, 0, 255)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")  # P, PA, L, LA, 1, RGBA, CMYK, YCbCr: alpha is dropped


def _open_pil(data: bytes, path: str | Path, info: ImageInfo, draft: Size | None, limit: int) -> Any:
    """Decoded Pillow RGB image, EXIF orientation applied; ``draft``: JPEG reduced decode target."""
    from PIL import ImageOps

    Image = _pil()
    if Image.MAX_IMAGE_PIXELS is not None and limit > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1  # the user raised geokit's limit: Pillow's follows
    try:
        im = Image.open(io.BytesIO(data))
        if draft is not None and im.format == "JPEG":
            th, tw = draft
            if info.orientation >= 5:
                th, tw = tw, th
            im.draft("RGB", (tw, th))
        im.load()  # a truncated file fails here
        im = ImageOps.exif_transpose(im)
        return _rgb_image(im)
    except GeokitError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"{exc}; raise images.max_pixels if you trust it", refused=True) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise _corrupt(path, info, data, "Pillow", str(exc)) from None


def _decode_pil_array(data: bytes, path: str | Path, info: ImageInfo, limit: int) -> np.ndarray:
    return np.array(_open_pil(data, path, info, None, limit))


def _decode_pil(
    data: bytes, info: ImageInfo, size: Size | None, reduced: bool, path: str | Path, limit: int
) -> np.ndarray:
    im = _open_pil(data, path, info, size if reduced else None, limit)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), _pil().BILINEAR)
    return np.array(im)  # a writable copy (torch.from_numpy warns on read-only arrays)


def decode_bytes(
    data: bytes, size: Size | None = None, options: ImageOptions | None = None, path: str | Path = "<bytes>"
) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 ``(H, W, 3)``, resized to ``size`` (height, width)
    when given. The header is checked against ``max_pixels`` before anything is decoded."""
    opts = options or current()
    info, complete = probe(data, path)
    check_pixels(info, path, opts.max_pixels)
    if not complete:
        raise _corrupt(path, info, data, opts.decoder, "no end-of-image marker")
    if opts.decoder == "pil":
        return _decode_pil(data, info, size, opts.reduced_jpeg, path, opts.max_pixels)
    return _decode_opencv(data, info, size, opts.reduced_jpeg, path, opts.max_pixels)


def load_image(path: str | Path, size: Size | None, options: ImageOptions | None = None) -> np.ndarray:
    """Decode the image file ``path`` to RGB uint8 ``(H, W, 3)`` at ``size`` (height, width;
    None: full size), with ``options`` (None: this process's, see :func:`current`).

    EXIF orientation is applied. Every failure is a :class:`GeokitError` naming the file.
    """
    return decode_bytes(read_bytes(path), size, options, path)


# ------------------------------------------------------------------------------ to tensors

_LUTS: dict[tuple[tuple[float, ...], tuple[float, ...]], np.ndarray] = {}


def _lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(1, 256, C) float32: ((v / 255) - mean) / std for every byte value, computed with the
    same float32 operations, in the same order, as the direct formula (so results are identical)."""
    lut = _LUTS.get((mean, std))
    if lut is None:
        import torch

        v = torch.arange(256, dtype=torch.float32).view(256, 1).repeat(1, len(mean)).div_(255.0)
        v = v.sub_(torch.tensor(mean, dtype=torch.float32)).div_(torch.tensor(std, dtype=torch.float32))
        lut = _LUTS[(mean, std)] = np.ascontiguousarray(v.numpy().reshape(1, 256, len(mean)))
    return lut


def to_tensor(image: np.ndarray, mean: Any, std: Any) -> Any:
    """uint8 HWC -> normalised float32 CHW (a view with channels-last strides, as before).

    One table look-up per byte (``cv2.LUT``) instead of three float passes: about 4x faster
    on a 384x384 image, bit-identical to ``(x / 255 - mean) / std`` in float32.
    """
    import torch

    mean, std = tuple(float(x) for x in mean), tuple(float(x) for x in std)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == len(mean) in (1, 3, 4):
        out = _opencv().LUT(np.ascontiguousarray(image), _lut(mean, std))
        return torch.from_numpy(out.reshape(image.shape)).permute(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return t.sub_(m).div_(sd)

"""The image loader (geokit.images): Sample4Geo's pixels, hostile files, modes, EXIF, options."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from geokit import images
from geokit.data import BadPair, CrossViewDataset, PairList, TrainSet, load_image
from geokit.errors import GeokitError
from geokit.images import ImageOptions

OPENCV = ImageOptions(decoder="opencv", reduced_jpeg=False)
PIL_ = ImageOptions(decoder="pil", reduced_jpeg=False)


@pytest.fixture(autouse=True)
def _restore_options():
    """Tests that configure the process's options leave it (and its env) as they found it."""
    saved_env = {v: os.environ.get(v) for v in [*images.ENV.values(), images.SOURCE_ENV]}
    saved = images._options
    yield
    images._options = saved
    for var, value in saved_env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photographic-like RGB: smooth colour fields, fine texture and a few hard edges."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(
        rng.random((h // 16 + 2, w // 16 + 2, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    texture = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.0)
    img = 0.6 * base + 0.5 * texture
    img[:, w // 3 : w // 3 + 3] = 0.05
    img[h // 2 : h // 2 + 2] = 0.95
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def original(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The released Sample4Geo path."""
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR_EXACT)


def save_jpeg(path: Path, rgb: np.ndarray, **kw) -> Path:
    Image.fromarray(rgb).save(path, "JPEG", quality=90, **kw)
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------- Sample4Geo's pixels


@pytest.mark.parametrize(
    "src,size",
    [
        ((96, 192), (36, 72)),  # VIGOR-like 2:1 pano, 2.67x down
        ((75, 75), (38, 38)),  # CVUSA tile 750 -> 384
        ((64, 64), (48, 48)),  # University-1652 512 -> 384
        ((22, 123), (14, 77)),  # CVUSA pano 1232x224 -> 140x768
        ((40, 50), (80, 90)),  # upscaling
        ((40, 50), (40, 50)),
    ],
)  # no resize
def test_opencv_default_is_bitwise_the_original_path(tmp_path, src, size):
    for i, ext in enumerate(("jpg", "png")):
        path = tmp_path / f"a.{ext}"
        Image.fromarray(photo(*src, seed=i)).save(path)
        expected = original(path, size)
        got = images.load_image(path, size, OPENCV)
        assert got.dtype == np.uint8 and got.shape == (*size, 3) and got.flags.writeable
        assert np.array_equal(got, expected)


def test_opencv_without_rgb_decoding_gives_the_same_pixels(tmp_path, monkeypatch):
    """OpenCV < 4.10 has no IMREAD_COLOR_RGB: BGR decode, resize, then swap (same values)."""
    path = save_jpeg(tmp_path / "a.jpg", photo(60, 120))
    expected = original(path, (24, 48))
    monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB")
    assert np.array_equal(images.load_image(path, (24, 48), OPENCV), expected)


def test_default_options_and_data_load_image_use_opencv(tmp_path):
    assert ImageOptions().decoder == "opencv" and not ImageOptions().reduced_jpeg
    path = save_jpeg(tmp_path / "a.jpg", photo(60, 120))
    images.configure(None)
    assert np.array_equal(load_image(path, (24, 48)), original(path, (24, 48)))
    assert np.array_equal(CrossViewDataset().load_image(str(path), (24, 48)), original(path, (24, 48)))


def test_pil_option_is_the_previous_behaviour(tmp_path):
    path = save_jpeg(tmp_path / "a.jpg", photo(60, 120))
    with Image.open(path) as im:
        before = np.array(im.convert("RGB").resize((48, 24), Image.BILINEAR))
    assert np.array_equal(images.load_image(path, (24, 48), PIL_), before)
    images.configure(PIL_)
    assert np.array_equal(load_image(path, (24, 48)), before)
    assert not np.array_equal(before, original(path, (24, 48)))  # the two really differ


def test_reduced_jpeg_decodes_smaller_and_stays_close(tmp_path, monkeypatch):
    path = save_jpeg(tmp_path / "pano.jpg", photo(256, 512))
    full = images.load_image(path, (96, 192), OPENCV)
    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: calls.append(flags) or real(buf, flags))
    red = images.load_image(path, (96, 192), ImageOptions(reduced_jpeg=True))
    assert calls == [cv2.IMREAD_REDUCED_GRAYSCALE_2 | cv2.IMREAD_COLOR_RGB]  # 512x256 -> 256x128
    assert red.shape == full.shape and not np.array_equal(red, full)
    mse = np.mean((red.astype(float) - full) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30
    # A target above half the source: no reduction, identical pixels.
    calls.clear()
    same = images.load_image(path, (160, 320), ImageOptions(reduced_jpeg=True))
    assert calls == [cv2.IMREAD_COLOR_RGB]
    assert np.array_equal(same, original(path, (160, 320)))
    # Pillow's reduced decode (draft) also gives the target size.
    assert images.load_image(path, (96, 192), ImageOptions(decoder="pil", reduced_jpeg=True)).shape == (96, 192, 3)


# ---------------------------------------------------------------------- hostile and odd files


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(100_000, 100_000))
    assert path.stat().st_size < 200
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    for opts in (OPENCV, PIL_):
        with pytest.raises(GeokitError) as exc:
            images.load_image(path, (32, 32), opts)
        msg = str(exc.value)
        assert str(path) in msg and "10,000,000,000 pixels" in msg and "images.max_pixels" in msg
        assert "\n" not in msg


def test_pixel_limit_is_configurable(tmp_path):
    path = save_jpeg(tmp_path / "a.jpg", photo(40, 50))
    assert images.load_image(path, (8, 8), ImageOptions(max_pixels=2000)).shape == (8, 8, 3)
    with pytest.raises(GeokitError, match="2,000 pixels, over the limit of 1,999"):
        images.load_image(path, (8, 8), ImageOptions(max_pixels=1999))
    images.configure(ImageOptions(max_pixels=1999))
    with pytest.raises(GeokitError, match="a.jpg refused"):
        load_image(path, (8, 8))


def test_bomb_is_skipped_under_bad_images_skip(tmp_path):
    good = save_jpeg(tmp_path / "good.jpg", photo(32, 32))
    (tmp_path / "bomb.png").write_bytes(bomb_png(50_000, 50_000))
    train = TrainSet([str(good), str(tmp_path / "bomb.png")], [str(good)], np.array([0, 0]))
    ds = CrossViewDataset()
    ds.query_size = ds.reference_size = (16, 16)
    pairs = PairList(ds, train, bad_images="skip")
    assert not isinstance(pairs[0], BadPair)
    bad = pairs[1]
    assert isinstance(bad, BadPair) and "bomb.png" in bad.message and "refused" in bad.message
    with pytest.raises(GeokitError, match="bomb.png"):
        PairList(ds, train)[1]


@pytest.mark.parametrize("decoder", ["opencv", "pil"])
def test_16_bit_grey_png_is_grey_not_white(tmp_path, decoder):
    grey = np.full((6, 8), 128 * 257, np.uint16)  # 50 % grey in 16 bits
    grey[0, 0], grey[0, 1] = 65535, 0
    path = tmp_path / "g16.png"
    assert cv2.imwrite(str(path), grey)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow's convert("RGB") of this gave all-white
    out = images.load_image(path, None, ImageOptions(decoder=decoder))
    assert out.shape == (6, 8, 3)
    assert (out[1:] == 128).all() and (out[0, 0] == 255).all() and (out[0, 1] == 0).all()


@pytest.mark.parametrize("decoder", ["opencv", "pil"])
def test_other_modes_become_the_right_rgb(tmp_path, decoder):
    opts = ImageOptions(decoder=decoder)
    rgb16 = np.zeros((4, 6, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 1000, 40000, 65535  # B, G, R for OpenCV
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb16)
    pal = Image.new("P", (6, 4))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png")
    Image.new("LA", (6, 4), (77, 10)).save(tmp_path / "la.png")
    Image.new("RGBA", (6, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("1", (6, 4), 1).save(tmp_path / "bit.png")
    Image.new("L", (6, 4), 99).save(tmp_path / "l.jpg", quality=95)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    expect = {
        "c16.png": (255, 156, 3),
        "p.png": (200, 100, 50),
        "la.png": (77, 77, 77),
        "rgba.png": (10, 20, 30),
        "bit.png": (255, 255, 255),
        "l.jpg": (99, 99, 99),
        "cmyk.jpg": (255, 0, 0),
    }
    for name, colour in expect.items():
        out = images.load_image(tmp_path / name, None, opts)
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8, name
        assert np.abs(out[1, 1].astype(int) - colour).max() <= 1, (name, out[1, 1])
    assert images.load_image(tmp_path / "p.png", None, opts)[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("decoder", ["opencv", "pil"])
def test_exif_orientation_is_applied(tmp_path, decoder):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the red half ends on top
    path = save_jpeg(tmp_path / "phone.jpg", rgb, exif=exif.tobytes())
    out = images.load_image(path, None, ImageOptions(decoder=decoder))
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[35, 10, 0] < 50
    sized = images.load_image(path, (16, 8), ImageOptions(decoder=decoder, reduced_jpeg=True))
    assert sized.shape == (16, 8, 3) and sized[2, 4, 0] > 200 and sized[14, 4, 0] < 50
    if decoder == "opencv":
        assert np.array_equal(images.load_image(path, (16, 8), OPENCV), original(path, (16, 8)))


def test_exif_orientation_parser(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    path = save_jpeg(tmp_path / "o.jpg", photo(20, 30), exif=exif.tobytes())
    info, complete = images.probe(path.read_bytes())
    assert (info.format, info.width, info.height, info.orientation, complete) == ("JPEG", 30, 20, 8, True)
    # The reduction is chosen on the stored axes: 30x20 stored, shown 20x30, target 10x15 (h, w).
    assert images._reduction(info, (15, 10)) == 2 and images._reduction(info, (16, 10)) == 1


@pytest.mark.parametrize("decoder", ["opencv", "pil"])
def test_broken_files_are_one_paragraph_naming_the_file(tmp_path, decoder):
    opts = ImageOptions(decoder=decoder)
    jpg = save_jpeg(tmp_path / "whole.jpg", photo(64, 64)).read_bytes()
    png = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(png, "PNG")
    cases = {
        "cut.jpg": jpg[: len(jpg) // 2],
        "noeoi.jpg": jpg[:-2],
        "cut.png": png.getvalue()[:400],
        "head.jpg": jpg[:20],
        "text.jpg": b"hello, not an image",
        "empty.png": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(GeokitError) as exc:
            images.load_image(tmp_path / name, (16, 16), opts)
        msg = str(exc.value)
        assert str(tmp_path / name) in msg and "\n" not in msg and "Traceback" not in msg, msg
    with pytest.raises(GeokitError, match="image not found: .*missing.jpg"):
        images.load_image(tmp_path / "missing.jpg", (16, 16), opts)


@pytest.mark.parametrize("decoder", ["opencv", "pil"])
def test_non_ascii_path(tmp_path, decoder):
    folder = tmp_path / "straße" / "東京 ü"
    folder.mkdir(parents=True)
    path = save_jpeg(folder / "パノラマ é.jpg", photo(30, 60))
    out = images.load_image(path, (10, 20), ImageOptions(decoder=decoder))
    assert out.shape == (10, 20, 3)


def test_other_formats_decode(tmp_path):
    rgb = photo(20, 30)
    for ext in ("bmp", "webp", "tiff", "gif"):
        Image.fromarray(rgb).save(tmp_path / f"a.{ext}")
        for opts in (OPENCV, PIL_):
            assert images.load_image(tmp_path / f"a.{ext}", (10, 15), opts).shape == (10, 15, 3), ext


# ---------------------------------------------------------------------- configuration


def test_config_images_section(pairs_root):
    from geokit import config
    from geokit.testing import tiny_config

    base = tiny_config(pairs_root)
    cfg = config.resolve(dict(base))
    assert cfg.images == ImageOptions() and "images" not in cfg.to_dict()  # old run folders compare equal
    assert images.current().decoder == "opencv"
    cfg = config.resolve(config.apply_overrides(base, ["images.decoder=pil", "images.max_pixels=5000000"]))
    assert cfg.images.decoder == "pil" and cfg.to_dict()["images"]["max_pixels"] == 5_000_000
    assert images.current() == cfg.images  # applied to this process...
    assert os.environ["GEOKIT_IMAGES_DECODER"] == "pil"  # ...and to the workers it starts
    with pytest.raises(GeokitError, match="images.decoder"):
        config.resolve(config.apply_overrides(base, ["images.decoder=cv3"]))
    with pytest.raises(GeokitError, match="images.max_pix"):
        config.resolve(config.apply_overrides(base, ["images.max_pix=3"]))


def test_environment_defaults(monkeypatch):
    monkeypatch.setattr(images, "_ENV_DEFAULTS", {"decoder": "pil", "reduced_jpeg": "1", "max_pixels": "77"})
    assert ImageOptions() == ImageOptions(decoder="pil", reduced_jpeg=True, max_pixels=77)
    monkeypatch.setattr(images, "_ENV_DEFAULTS", {"reduced_jpeg": "0"})
    assert ImageOptions().reduced_jpeg is False
    monkeypatch.setattr(images, "_ENV_DEFAULTS", {"decoder": "magick"})
    monkeypatch.setenv("GEOKIT_IMAGES_DECODER", "magick")
    images._options = None
    with pytest.raises(GeokitError, match="GEOKIT_IMAGES_DECODER='magick'"):
        images.current()


def test_verify_full_decode_uses_the_loader(tmp_path):
    from geokit.verify import decode_check

    (tmp_path / "bomb.png").write_bytes(bomb_png(40_000, 40_000))
    reason = decode_check(str(tmp_path / "bomb.png"))
    assert isinstance(reason, str) and "1,600,000,000 pixels" in reason
    grey = np.full((6, 8), 128 * 257, np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    assert decode_check(str(tmp_path / "g16.png")) == (8, 6)
    (tmp_path / "cut.jpg").write_bytes(save_jpeg(tmp_path / "w.jpg", photo(32, 32)).read_bytes()[:300])
    assert "truncated" in decode_check(str(tmp_path / "cut.jpg"))


def test_truncated_jpeg_is_refused_even_where_opencv_would_fill_it(tmp_path, monkeypatch):
    """OpenCV 4.x decodes a truncated JPEG with a warning and grey rows; the EOI check refuses it."""
    data = save_jpeg(tmp_path / "w.jpg", photo(64, 64)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(GeokitError, match=r"cut.jpg: the JPEG data .* truncated or corrupt \(no end-of-image"):
        images.load_image(tmp_path / "cut.jpg", (16, 16), OPENCV)


def test_to_tensor_is_the_float_formula_bit_for_bit():
    import torch

    from geokit.data import to_tensor

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 1, 254]]
    for view in (img, img[:, ::-1], np.rot90(img)):
        expected = torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1).float().div(255.0)
        expected = (expected - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        got = to_tensor(view, mean, std)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected)
    grey = img[..., :1]
    assert torch.equal(
        to_tensor(grey, (0.5,), (0.25,)),
        (torch.from_numpy(np.ascontiguousarray(grey)).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.25,
    )
    floats = img.astype(np.float32)  # not uint8: the direct formula
    assert torch.allclose(to_tensor(floats, mean, std), to_tensor(img, mean, std))


def test_image_errors_survive_pickling_and_worker_reraise(tmp_path):
    import pickle

    (tmp_path / "bomb.png").write_bytes(bomb_png(50_000, 50_000))
    with pytest.raises(images.ImageError) as exc:
        images.load_image(tmp_path / "bomb.png", (8, 8))
    again = pickle.loads(pickle.dumps(exc.value))
    assert isinstance(again, GeokitError) and str(again) == str(exc.value)
    assert str(type(exc.value)("a message")) == "a message"  # torch's ExceptionWrapper.reraise


def test_a_checkpoint_decodes_as_it_was_trained(tmp_path, monkeypatch):
    """locate / index build run from a checkpoint: its record's images options apply."""
    import torch  # noqa: F401

    from geokit.checkpoint import save_weights
    from geokit.index import load_encoder
    from geokit.model import BuildContext, build_component, without_initial_weights

    options = {"model": "convnext_atto", "pretrained": False}
    module = build_component(
        "encoder",
        "convnext",
        without_initial_weights(options),
        BuildContext("encoder", dataset_name="pairs", query_size=(32, 128), reference_size=(32, 32)),
    )
    record = {
        "encoder": {"name": "convnext", **options},
        "embedding_dim": int(module.embedding_dim),
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "query_size": [32, 128],
        "reference_size": [32, 32],
        "config": {"images": {"decoder": "pil", "reduced_jpeg": True}},
    }
    tensors = {f"encoder.{k}": v for k, v in module.state_dict().items()}
    save_weights(tmp_path / "pil.safetensors", tensors, record)
    images.configure(None)
    load_encoder(tmp_path / "pil.safetensors")
    assert images.current() == ImageOptions(decoder="pil", reduced_jpeg=True)
    # A record without images (defaults, or from before the option) leaves the process as it is.
    save_weights(tmp_path / "plain.safetensors", tensors, {k: v for k, v in record.items() if k != "config"})
    images.configure(None)
    load_encoder(tmp_path / "plain.safetensors")
    assert images.current() == ImageOptions()
    # What the user set in the environment wins over the record.
    monkeypatch.setattr(images, "_USER_ENV", {"decoder": "opencv"})
    images.configure(None)
    assert images.apply_record(record).decoder == "opencv" and images.current().reduced_jpeg
    monkeypatch.setattr(images, "_USER_ENV", {})
    with pytest.raises(GeokitError, match="ck.safetensors: the record's config.images.decoder"):
        images.apply_record({"config": {"images": {"decoder": "magick"}}}, "ck.safetensors")


def test_variables_exported_by_a_parent_do_not_count_as_the_users(tmp_path):
    """A process started after a config was resolved (a subprocess 'geokit locate') still
    follows its checkpoint's record: the inherited variables are marked as geokit's own."""
    import subprocess
    import sys

    images.configure(ImageOptions())
    code = (
        "from geokit import images; "
        "print(images._USER_ENV, images.apply_record({'config': {'images': {'decoder': 'pil'}}}).decoder)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["{}", "pil"]
    env = {**os.environ, "GEOKIT_IMAGES_DECODER": "opencv"}
    env.pop(images.SOURCE_ENV)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split()[-1] == "opencv"

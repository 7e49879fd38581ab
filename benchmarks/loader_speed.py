"""Image loader speed and pixels: geokit (geokit.images) against the released Sample4Geo path.

One thread (``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``), realistic JPEGs (smooth colour
fields, fine texture, hard edges; quality 90) at each benchmark's real file size.

1. Per image, decode + resize to the recipe size: the original's ``cv2.imread`` -> ``cvtColor
   (BGR2RGB)`` -> ``cv2.resize(INTER_LINEAR_EXACT)`` against geokit's ``opencv`` decoder
   (default), ``opencv`` with ``reduced_jpeg`` and the ``pil`` decoder; and what ``reduced_jpeg``
   and ``pil`` do to the pixels (PSNR, max abs difference against the original's pixels).
2. Whole training pairs per second per core: geokit's ``PairList`` (decode, the benchmark plugins'
   ``PairAugment``, tensors) against the original's ``__getitem__`` (imread, BGR->RGB, joint flip,
   its albumentations pipelines with ``Resize(INTER_LINEAR_EXACT)`` after ``ImageCompression`` on the
   full-size image, Normalize, ToTensorV2, then rot90 / roll on the tensors); and against the
   original with the compression moved after the resize (geokit's order), which isolates what
   the loader itself gains.

Methods are interleaved (A, B, C, A, B, C, ...) for several rounds with the same images and the
same random draws each round; medians of CPU time (``time.process_time``: other processes on a
shared machine inflate wall time, much less CPU time) and the original's time / geokit's time.

    .venv/bin/python benchmarks/loader_speed.py [--rounds 9] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import torch

from geokit import images
from geokit.images import ImageOptions

# name: (source width, source height, target (height, width)); sizes of the public files.
SIZES: dict[str, tuple[int, int, tuple[int, int]]] = {
    "VIGOR panorama": (2048, 1024, (384, 768)),
    "VIGOR aerial": (640, 640, (384, 384)),
    "CVUSA panorama": (1232, 224, (140, 768)),
    "CVUSA aerial": (750, 750, (384, 384)),
    "CVACT panorama": (1664, 832, (140, 768)),
    "CVACT aerial": (1200, 1200, (384, 384)),
    "University-1652": (512, 512, (384, 384)),
    "VIGOR pano, smoother": (2048, 1024, (384, 768)),  # less fine texture: fewer bits per pixel
}
SMOOTHER = {"VIGOR pano, smoother"}  # no fine texture, slightly blurred: about half the bits
# dataset: (query size name, reference size name, geometry); U1652's views are both 512x512.
PAIRS = {
    "VIGOR": ("VIGOR panorama", "VIGOR aerial", "panorama"),
    "CVUSA": ("CVUSA panorama", "CVUSA aerial", "panorama"),
    "CVACT": ("CVACT panorama", "CVACT aerial", "panorama"),
    "University-1652": ("University-1652", "University-1652", "independent"),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(w: int, h: int, seed: int, smoother: bool = False) -> np.ndarray:
    """Photographic-like content: smooth colour fields at several scales, sensor-like texture,
    hard edges (buildings, roads), so JPEG and the resamplers have real work (not flat colour)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for cell, weight in ((64, 0.5), (16, 0.3), (4, 0.0 if smoother else 0.15)):
        small = rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        img += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += (0.0 if smoother else 0.25) * cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 0.8)
    for _ in range(12):  # edges
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 20, w // 4)), y0 + int(rng.integers(h // 20, h // 4))
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * 0.3 + float(rng.random()) * 0.7
    if smoother:
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
    return np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)


def make_images(folder: Path, per_size: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, (name, (w, h, _)) in enumerate(SIZES.items()):
        k = k if name not in SMOOTHER else 0  # the same scenes as the VIGOR panoramas
        paths = []
        for i in range(per_size):
            p = folder / f"{name.replace(' ', '_')}_{i}.jpg"
            rgb = photo(w, h, 100 * k + i, name in SMOOTHER)
            cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(str(p))
        out[name] = paths
    return out


def original_load(path: str, size: tuple[int, int]) -> np.ndarray:
    """Sample4Geo: imread, BGR->RGB on the full image, resize INTER_LINEAR_EXACT."""
    img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR_EXACT)


def interleave(
    methods: dict[str, Callable[[], Any]], rounds: int, calls: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median CPU seconds per call of each method, A/B/C interleaved over ``rounds`` (the order
    rotates each round); and the median over rounds of (first method's time / this method's)."""
    for fn in methods.values():
        fn()  # warm-up (imports, caches)
    names = list(methods)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = methods[name]
            t = time.process_time()
            for _ in range(calls):
                fn()
            times[name].append((time.process_time() - t) / calls)
    base = np.asarray(times[names[0]])
    ratio = {k: float(np.median(base / np.asarray(v))) for k, v in times.items() if k != names[0]}
    return {k: float(np.median(v)) for k, v in times.items()}, ratio


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def per_image(files: dict[str, list[str]], rounds: int, budget: float) -> list[dict[str, Any]]:
    rows = []
    opts = {
        "geokit opencv": ImageOptions(decoder="opencv"),
        "geokit opencv reduced": ImageOptions(decoder="opencv", reduced_jpeg=True),
        "geokit pil": ImageOptions(decoder="pil"),
    }
    for name, paths in files.items():
        size = SIZES[name][2]
        cycle = {"i": 0}

        def nxt() -> str:
            cycle["i"] = (cycle["i"] + 1) % len(paths)
            return paths[cycle["i"]]

        methods: dict[str, Callable[[], Any]] = {"original": lambda: original_load(nxt(), size)}
        for label, o in opts.items():
            methods[label] = lambda o=o: images.load_image(nxt(), size, o)
        t0 = time.process_time()
        original_load(paths[0], size)
        calls = max(2, int(budget / max(time.process_time() - t0, 1e-4)))
        med, speedup = interleave(methods, rounds, calls)
        ref = [original_load(p, size) for p in paths]
        pix = {}
        for label in ("geokit opencv", "geokit opencv reduced", "geokit pil"):
            outs = [images.load_image(p, size, opts[label]) for p in paths]
            pix[label] = {
                "identical": all(np.array_equal(a, b) for a, b in zip(outs, ref)),
                "psnr_db": float(np.mean([psnr(a, b) for a, b in zip(outs, ref)])),
                "max_abs_diff": int(max(np.abs(a.astype(int) - b).max() for a, b in zip(outs, ref))),
            }
        w, h, _ = SIZES[name]
        bpp = float(np.mean([os.path.getsize(p) for p in paths])) * 8 / (w * h)
        rows.append(
            {
                "view": name,
                "source": f"{w}x{h}",
                "target": f"{size[1]}x{size[0]}",
                "bits_per_pixel": bpp,
                "ms": {k: v * 1e3 for k, v in med.items()},
                "speedup": speedup,
                "pixels": pix,
            }
        )
        print(
            f"{name:16s} {w}x{h} ({bpp:.2f} bpp) -> {size[1]}x{size[0]}: "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items())
            + " | x: "
            + ", ".join(f"{k} {v:.3f}" for k, v in speedup.items())
            + " | reduced: "
            + (
                "identical"
                if pix["geokit opencv reduced"]["identical"]
                else f"PSNR {pix['geokit opencv reduced']['psnr_db']:.1f} dB, "
                f"max {pix['geokit opencv reduced']['max_abs_diff']}"
            )
            + f" | pil PSNR {pix['geokit pil']['psnr_db']:.1f} dB",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------ training pairs


def original_pipelines(
    ground: tuple[int, int], sat: tuple[int, int], u1652: bool, compress_after_resize: bool = False
) -> tuple[Any, Any]:
    """Sample4Geo's train transforms (transforms.py), albumentations 1.x semantics in the 2.x API:
    CoarseDropout hole sizes are 0.1-0.2 of the image *height*, in pixels.
    ``compress_after_resize``: ImageCompression moved after Resize, as geokit orders it (to
    separate the loader's share of the speed-up from the augmentation order's)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    def pipe(size: tuple[int, int], ratio: float, rotate: bool) -> Any:
        hole = (int(0.1 * size[0]), int(0.2 * size[0]))
        steps = [
            A.ImageCompression(quality_range=(90, 100), p=0.5),
            A.Resize(size[0], size[1], interpolation=cv2.INTER_LINEAR_EXACT, p=1.0),
        ]
        if compress_after_resize:
            steps.reverse()
        steps += [
            A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.15, p=0.5),
            A.OneOf([A.AdvancedBlur(p=1.0), A.Sharpen(p=1.0)], p=0.3),
            A.OneOf(
                [
                    A.GridDropout(ratio=ratio, p=1.0),
                    A.CoarseDropout(num_holes_range=(10, 25), hole_height_range=hole, hole_width_range=hole, p=1.0),
                ],
                p=0.3,
            ),
        ]
        if rotate:
            steps.append(A.RandomRotate90(p=1.0))
        return A.Compose(steps + [A.Normalize(MEAN, STD), ToTensorV2()])

    return pipe(ground, 0.5, False), pipe(sat, 0.4, u1652)


class OriginalPairs:
    """The original's ``__getitem__`` for one pair (CVUSA/CVACT/VIGOR; University-1652)."""

    def __init__(
        self,
        qpaths: list[str],
        rpaths: list[str],
        qsize: tuple[int, int],
        rsize: tuple[int, int],
        geometry: str,
        compress_after_resize: bool = False,
    ):
        self.q, self.r, self.geometry = qpaths, rpaths, geometry
        self.qpipe, self.rpipe = original_pipelines(qsize, rsize, geometry != "panorama", compress_after_resize)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        random.seed(i)  # the original draws from Python's global random
        self.qpipe.set_random_seed(2 * i)
        self.rpipe.set_random_seed(2 * i + 1)
        q = cv2.cvtColor(cv2.imread(self.q[i % len(self.q)]), cv2.COLOR_BGR2RGB)
        r = cv2.cvtColor(cv2.imread(self.r[i % len(self.r)]), cv2.COLOR_BGR2RGB)
        if random.random() < 0.5:
            q, r = cv2.flip(q, 1), cv2.flip(r, 1)
        qt, rt = self.qpipe(image=q)["image"], self.rpipe(image=r)["image"]
        if self.geometry == "panorama" and random.random() < 0.75:
            k = random.choice([1, 2, 3])
            rt = torch.rot90(rt, k=k, dims=(1, 2))
            qt = torch.roll(qt, shifts=-k * qt.shape[-1] // 4, dims=2)
        return qt, rt


def geokit_pairs(
    qpaths: list[str], rpaths: list[str], qsize: tuple[int, int], rsize: tuple[int, int], geometry: str
) -> Any:
    """geokit's training pairs as the benchmark plugins build them (PairAugment, PairList)."""
    from geokit.augment import PairAugment
    from geokit.data import CrossViewDataset, PairList, TrainSet

    class Bench(CrossViewDataset):
        query_size, reference_size = qsize, rsize
        _augment = PairAugment(geometry=geometry)  # type: ignore[arg-type]

        def augment_pair(self, query, reference, rng):  # type: ignore[no-untyped-def]
            return self._augment(query, reference, rng)

    n = max(len(qpaths), len(rpaths))
    train = TrainSet([qpaths[i % len(qpaths)] for i in range(n)], list(rpaths), np.arange(n) % len(rpaths))
    return PairList(Bench(), train, seed=0)


def per_pair(files: dict[str, list[str]], rounds: int, samples: int) -> list[dict[str, Any]]:
    rows = []
    for ds, (qname, rname, geometry) in PAIRS.items():
        qsize, rsize = SIZES[qname][2], SIZES[rname][2]
        orig = OriginalPairs(files[qname], files[rname], qsize, rsize, geometry)
        orig_late = OriginalPairs(files[qname], files[rname], qsize, rsize, geometry, True)
        geo = geokit_pairs(files[qname], files[rname], qsize, rsize, geometry)
        n = len(geo)

        def run_geokit(o: ImageOptions) -> None:
            images.configure(o)
            for i in range(samples):
                geo[i % n]

        methods = {
            "original": lambda: [orig[i] for i in range(samples)],
            "original, compression after resize": lambda: [orig_late[i] for i in range(samples)],
            "geokit opencv": lambda: run_geokit(ImageOptions(decoder="opencv")),
            "geokit opencv reduced": lambda: run_geokit(ImageOptions(decoder="opencv", reduced_jpeg=True)),
        }
        med, speedup = interleave(methods, rounds, 1)
        med = {k: v / samples for k, v in med.items()}
        images.configure(None)
        rows.append({"dataset": ds, "pairs_per_s": {k: 1.0 / v for k, v in med.items()}, "speedup": speedup})
        print(
            f"{ds:16s} pairs/s/core: "
            + ", ".join(f"{k} {1 / v:.1f}" for k, v in med.items())
            + " | x: "
            + ", ".join(f"{k} {v:.2f}" for k, v in speedup.items()),
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--images", type=int, default=4, help="distinct images per size")
    ap.add_argument("--budget", type=float, default=0.15, help="CPU seconds per method per round")
    ap.add_argument("--samples", type=int, default=12, help="training pairs per method per round")
    ap.add_argument("--quick", action="store_true", help="3 rounds, fewer samples (a smoke run)")
    ap.add_argument("--skip-pairs", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.budget, args.samples = 3, 0.05, 4
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, opencv {cv2.__version__}, torch {torch.__version__}; "
        f"one thread; CPU time medians of {args.rounds} interleaved rounds",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = make_images(Path(tmp), args.images)
        result: dict[str, Any] = {"per_image": per_image(files, args.rounds, args.budget)}
        if not args.skip_pairs:
            result["per_pair"] = per_pair(files, args.rounds, args.samples)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

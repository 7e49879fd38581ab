"""Dataset ``cvact``: CVACT (Liu & Li, CVPR 2019) as used by Sample4Geo (sample4geo.md §7).

``ACT_data.mat`` lists the panorama ids (``panoIds``), their UTM coordinates (``utm``, zone 55
south: Canberra) and the 1-based indices of the training and validation pairs in the MATLAB
structs ``trainSet.trainInd`` and ``valSet.valInd``. Train and val images live in
``ANU_data_small``; CVACT_test is every id present in both folders of ``ANU_data_test``.
``split: val|test`` picks the evaluation split; matching is one-to-one by id.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt

import geokit
from geokit.data import EvalSet, TrainSet
from geokit.errors import GeokitError
from geokit.problems import problem
from geokit_plugins.datasets._benchmark_common import BenchmarkDataset, BenchmarkOptions

LAYOUT = """  <root>/ACT_data.mat                 panoIds, utm, trainSet.trainInd, valSet.valInd (MATLAB v5 file;
                                      get it from shiyujiao/cross_view_localization_CVFT,
                                      script/OriNet_CVACT/CVACT_orientations)
  <root>/ANU_data_small/streetview/<id>_grdView.jpg          train + val panoramas
  <root>/ANU_data_small/satview_polish/<id>_satView_polish.jpg  train + val satellite tiles
  <root>/ANU_data_test/streetview/<id>_grdView.jpg           CVACT_test (only for split: test)
  <root>/ANU_data_test/satview_polish/<id>_satView_polish.jpg"""

MAT = "ACT_data.mat"
GROUND, SAT = "streetview", "satview_polish"
GROUND_SUFFIX, SAT_SUFFIX = "_grdView.jpg", "_satView_polish.jpg"


class CVACTOptions(BenchmarkOptions):
    query_size: tuple[PositiveInt, PositiveInt] = Field((140, 768), description="[height, width] of panoramas")
    split: Literal["val", "test"] = Field(
        "val", description="evaluation split: val (CVACT_val, 8,884) or test (CVACT_test, 92,802)"
    )
    utm_zone: int = Field(55, ge=1, le=60, description="UTM zone of ACT_data.mat 'utm' (Canberra: 55)")
    utm_south: bool = Field(True, description="southern hemisphere UTM (false northing 10,000 km)")


def utm_to_latlon(easting: np.ndarray, northing: np.ndarray, zone: int, south: bool) -> np.ndarray:
    """WGS84 UTM -> ``(n, 2)`` latitude/longitude in degrees (inverse transverse Mercator,
    Snyder 1987 series; sub-metre within a zone)."""
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x = np.asarray(easting, dtype=np.float64) - 500_000.0
    y = np.asarray(northing, dtype=np.float64) - (10_000_000.0 if south else 0.0)
    mu = (y / k0) / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * np.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * np.sin(4 * mu)
        + (151 * e1**3 / 96) * np.sin(6 * mu)
        + (1097 * e1**4 / 512) * np.sin(8 * mu)
    )
    s, c, t = np.sin(phi1), np.cos(phi1), np.tan(phi1)
    c1, t1 = ep2 * c**2, t**2
    n1 = a / np.sqrt(1 - e2 * s**2)
    r1 = a * (1 - e2) / (1 - e2 * s**2) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d - (1 + 2 * t1 + c1) * d**3 / 6 + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / c
    lon0 = math.radians((zone - 1) * 6 - 180 + 3)
    return np.c_[np.degrees(lat), np.degrees(lon + lon0)]


def _strings(arr: Any) -> list[str] | None:
    """panoIds as a list of str: a MATLAB char matrix or a cell array of strings."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.ravel()]
    if arr.dtype == object:
        out = []
        for el in arr.ravel():
            el = np.asarray(el).ravel()
            if el.size != 1 or el.dtype.kind != "U":
                return None
            out.append(str(el[0]).strip())
        return out
    return None


class CVACTDataset(BenchmarkDataset):
    """CVACT: 35,532 training pairs; CVACT_val 8,884 and CVACT_test 92,802 one-to-one pairs."""

    name = "cvact"
    layout = LAYOUT
    query_view = "ground"
    reference_view = "satellite"

    def __init__(self, options: CVACTOptions):
        super().__init__(options)
        self.options: CVACTOptions = options
        has_test = (self.root / "ANU_data_test").is_dir()
        self.splits: tuple[str, ...]
        if options.split == "test":
            self.splits = ("val", "test")
        else:
            self.splits = ("test", "val") if has_test else ("val",)

    # -- ACT_data.mat ------------------------------------------------------------------------

    def _mat(self) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            import scipy.io

            path = self.require_file(MAT, "the CVACT index file")
            try:
                m = scipy.io.loadmat(str(path))
            except NotImplementedError:
                raise GeokitError(
                    f"{MAT}: a MATLAB v7.3 (HDF5) file; re-save it in MATLAB with "
                    "save(..., '-v7') or use the released v5 file"
                ) from None
            except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad file
                raise GeokitError(f"{MAT}: cannot read as a MATLAB file: {exc}") from None
            for key in ("panoIds", "utm", "trainSet", "valSet"):
                if key not in m:
                    found = ", ".join(k for k in m if not k.startswith("__"))
                    raise GeokitError(
                        f"{MAT}: no variable '{key}' (found: {found or 'nothing'}); is this the CVACT ACT_data.mat?"
                    )
            ids = _strings(m["panoIds"])
            if ids is None:
                raise GeokitError(
                    f"{MAT}: 'panoIds' is not a list of strings "
                    f"(found {m['panoIds'].dtype} of shape {m['panoIds'].shape})"
                )
            utm = np.asarray(m["utm"], dtype=np.float64)
            if utm.ndim != 2 or utm.shape[0] != len(ids) or utm.shape[1] < 2:
                raise GeokitError(
                    f"{MAT}: 'utm' has shape {utm.shape}, expected ({len(ids)}, 2): one easting/northing row per panoId"
                )
            utm = utm[:, :2]
            # The column holding values above 1,000 km is the northing (easting stays below 1,000 km).
            if np.median(utm[:, 0]) > 1e6 > np.median(utm[:, 1]):
                utm = utm[:, ::-1]
            gps = utm_to_latlon(utm[:, 0], utm[:, 1], self.options.utm_zone, self.options.utm_south)
            return {"ids": ids, "gps": gps, "trainSet": m["trainSet"], "valSet": m["valSet"]}

        return self.cached("mat", build)

    def _indices(self, struct: str, field: str) -> list[tuple[int, str]]:
        """0-based panoId indices from ``struct.field`` with their "entry k" locations."""
        mat = self._mat()
        value = mat[struct]
        names = getattr(value.dtype, "names", None)
        if not names:
            raise GeokitError(
                f"{MAT}: '{struct}' is not a MATLAB struct (found {value.dtype} of shape "
                f"{value.shape}); expected a struct with the field '{field}'"
            )
        if field not in names:
            raise GeokitError(f"{MAT}: struct '{struct}' has no field '{field}' (fields: {', '.join(names)})")
        raw = np.asarray(value[field].ravel()[0]).ravel()
        n_ids = len(mat["ids"])
        out = []
        for k, v in enumerate(raw):
            where = f"{struct}.{field} entry {k + 1}"
            if not (np.isfinite(v) and float(v) == int(v) and 1 <= int(v) <= n_ids):
                problem(
                    f"{float(v):g} is not a 1-based index into panoIds (1..{n_ids:,})",
                    file=MAT,
                    line=where,
                    category="malformed row",
                )
                continue
            out.append((int(v) - 1, where))
        if not out:
            problem(f"'{struct}.{field}' holds no usable index", file=MAT, category="empty split")
        return out

    def _pairs(self, which: str) -> tuple[list[str], list[str], np.ndarray]:
        """Panorama paths, tile paths and lat/lon of the train or val ids with both images."""

        def build() -> tuple[list[str], list[str], np.ndarray]:
            struct, field = ("trainSet", "trainInd") if which == "train" else ("valSet", "valInd")
            mat = self._mat()
            base = self.root / "ANU_data_small"
            grounds, sats, rows = [], [], []
            for i, where in self._indices(struct, field):
                pid = mat["ids"][i]
                g = str(base / GROUND / f"{pid}{GROUND_SUFFIX}")
                s = str(base / SAT / f"{pid}{SAT_SUFFIX}")
                if self.image_ok(g, MAT, where) & self.image_ok(s, MAT, where):
                    grounds.append(g)
                    sats.append(s)
                    rows.append(i)
            return grounds, sats, mat["gps"][rows].reshape(-1, 2)

        return self.cached(f"pairs/{which}", build)

    # -- CVACT_test ---------------------------------------------------------------------------

    def _test_pairs(self) -> tuple[list[str], list[str]]:
        def build() -> tuple[list[str], list[str]]:
            base = self.root / "ANU_data_test"
            found = {}
            for sub, suffix in ((GROUND, GROUND_SUFFIX), (SAT, SAT_SUFFIX)):
                folder = base / sub
                if not folder.is_dir():
                    raise GeokitError(
                        f"cvact split 'test': folder not found: {folder}."
                        f"{self.suggest_root(f'ANU_data_test/{sub}')} Expected layout:\n{self.layout}"
                    )
                found[sub] = {n[: -len(suffix)] for n in os.listdir(folder) if n.endswith(suffix)}
            ids = sorted(found[GROUND] & found[SAT])
            for sub, other in ((GROUND, SAT), (SAT, GROUND)):
                lonely = sorted(found[sub] - found[other])
                if lonely:
                    few = "1 id has" if len(lonely) == 1 else f"{len(lonely):,} ids have"
                    problem(
                        f"{few} a {sub} image but no {other} image and {'is' if len(lonely) == 1 else 'are'} "
                        "left out "
                        f"(first: {', '.join(lonely[:3])})",
                        file=f"ANU_data_test/{sub}",
                        category="unpaired image",
                        warning=True,
                    )
            if not ids:
                raise GeokitError(
                    f"cvact split 'test': no id has both {base / GROUND}/<id>{GROUND_SUFFIX} "
                    f"and {base / SAT}/<id>{SAT_SUFFIX}"
                )
            return (
                [str(base / GROUND / f"{i}{GROUND_SUFFIX}") for i in ids],
                [str(base / SAT / f"{i}{SAT_SUFFIX}") for i in ids],
            )

        return self.cached("pairs/test", build)

    # -- CrossViewDataset ---------------------------------------------------------------------

    def train_set(self) -> TrainSet:
        grounds, sats, gps = self._pairs("train")
        return TrainSet(grounds, sats, np.arange(len(sats)), reference_gps=gps)

    def eval_set(self, split: str | None = None) -> EvalSet:
        split = self.check_split(split)
        if split == "val":
            grounds, sats, gps = self._pairs("val")
            labels = np.arange(len(sats))
            return EvalSet(grounds, sats, labels, labels, query_gps=gps, reference_gps=gps, name="val")
        grounds, sats = self._test_pairs()
        labels = np.arange(len(sats))
        return EvalSet(grounds, sats, labels, labels, name="test")

    def known_sizes(self) -> dict[str, int]:
        return {
            "train pairs": 35_532,
            "train references": 35_532,
            "val queries": 8_884,
            "val references": 8_884,
            "test queries": 92_802,
            "test references": 92_802,
        }


@geokit.hookimpl
def geokit_register_datasets(registry):
    registry.add(
        "cvact",
        CVACTDataset,
        options=CVACTOptions,
        summary="CVACT (ACT_data.mat, ANU_data_small/_test): 35,532 train, val 8,884, test 92,802",
    )

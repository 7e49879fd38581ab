"""Peak memory of building an index: in memory (``build_index`` + ``save``) vs streamed through a
spool file (``spool_embeddings`` + ``write_index_from_spool``, what ``geokit index build`` runs).

Each case runs in a fresh process; it reports the peak resident memory (VmHWM) above the
process's resident memory after imports (the baseline), the time, and the file size. The
embeddings are synthetic unit rows (no encoder): this measures the index side, which is what
grows with the gallery; the encoder's own memory does not depend on the gallery size.

    python benchmarks/index_build_memory.py --n 200000 --dim 512 --types flat ivfpq --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def one(mode: str, kind: str, n: int, dim: int, chunk: int, folder: str) -> dict:
    import numpy as np

    from geokit.retrieval import IndexSpec, build_index, spool_embeddings, write_index_from_spool

    spec = IndexSpec(kind, nlist=256, m=64) if kind in ("ivf", "ivfpq") else IndexSpec(kind)
    paths = [f"tiles/{i:08d}.jpg" for i in range(n)]
    latlon = np.zeros((n, 2))

    def embed(pos: np.ndarray) -> np.ndarray:
        x = np.random.default_rng(int(pos[0])).normal(size=(len(pos), dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    out = Path(folder) / f"{mode}-{kind}.index"
    base = _status("VmRSS")
    t0 = time.perf_counter()
    if mode == "memory":
        ix = build_index(embed, n, dim, spec, paths=paths, latlon=latlon, chunk=chunk, show=False)
        ix.save(out)
    else:
        spool = spool_embeddings(embed, n, dim, Path(folder) / "x.spool", chunk=chunk)
        write_index_from_spool(spool, spec, out, paths=paths, latlon=latlon, chunk=max(chunk, 65536))
        spool.path.unlink()
    took = time.perf_counter() - t0
    return {
        "mode": mode,
        "type": kind,
        "n": n,
        "dim": dim,
        "peak_above_baseline_mib": (_status("VmHWM") - base) / 2**20,
        "seconds": took,
        "file_mib": out.stat().st_size / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--types", nargs="+", default=["flat", "ivfpq"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("MODE", "TYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.n, a.dim, a.chunk, a.folder)))
        return
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(a.rounds):  # interleaved: the machine is shared
            for kind in a.types:
                for mode in ("memory", "streamed"):
                    cmd = [
                        sys.executable,
                        __file__,
                        "--one",
                        mode,
                        kind,
                        "--n",
                        str(a.n),
                        "--dim",
                        str(a.dim),
                        "--chunk",
                        str(a.chunk),
                        "--folder",
                        folder,
                    ]
                    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                    rows.setdefault((kind, mode), []).append(res)
    vectors = a.n * a.dim * 4 / 2**20
    print(f"n={a.n} dim={a.dim} chunk={a.chunk}: float32 vectors = {vectors:.0f} MiB; medians of {a.rounds} rounds")
    print(f"{'type':<7}{'mode':<10}{'peak MiB':>10}{'seconds':>9}{'file MiB':>10}")
    for (kind, mode), rs in rows.items():
        print(
            f"{kind:<7}{mode:<10}{statistics.median(r['peak_above_baseline_mib'] for r in rs):10.0f}"
            f"{statistics.median(r['seconds'] for r in rs):9.1f}{rs[0]['file_mib']:10.0f}"
        )


if __name__ == "__main__":
    main()

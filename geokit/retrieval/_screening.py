"""Exact counts from bfloat16 blocks: the fast path of the evaluation metrics on AMX CPUs.

The metrics need, per query, how many references score strictly above a threshold (its true
match's score). On CPUs with AMX a bfloat16 matrix multiply runs ~4.5x faster than float32
(1,413 vs 288 GFLOP/s on the project's 2-core Xeon), but its scores are off by up to a few
thousandths. Screening uses the fast block to decide every reference it provably can, and
re-scores only the rest — in float64, so the counts are those of the float32 vectors' true
scores (a float32 matrix multiply itself misorders references a few 1e-8 apart):

1. The block is computed *shifted* by each query's threshold ``t``: the query gets two extra
   columns ``-t_hi, -t_lo`` (``t`` split into two bfloat16 numbers, exact to ~2^-16·|t|) and the
   gallery two columns of ones, so a score comes out as ``s - t``. Its rounding to bfloat16 is
   then relative to ``|s - t|``, near zero where decisions are made, instead of to ``|s|``.
2. A bound ``E`` on ``|(q̂·r̂ - t) - (q·r - t)|`` per query: rounding the inputs moves the dot
   product by at most ``|q̂|·max|r̂ - r| + |q̂ - q|·max|r|`` (Cauchy-Schwarz; the norms are
   measured, not assumed: ~0.0019 each at 1024-d), float32 accumulation by ``(D+2)·2^-24`` per
   unit of Σ|products| (taken 2x over), the split of ``t`` by ``u²|t|``, plus 1e-7 of slack.
3. A reference whose shifted score is above ``+E`` (after undoing the output rounding) is above
   for certain; below ``-E``, below for certain; in between it is *open* and re-scored with
   :func:`geokit.retrieval.exact_dots` (float64). A row with more than ``fallback`` open
   references is first re-scored whole by one float32 matrix multiply, whose own error bound
   (``D·2^-24``) leaves only the references within ~1e-4 of the threshold open.

The thresholds may also sit above ``t`` (the VIGOR hit rate compares with the best allowed score):
``θ - t`` moves the window, and the output rounding is accounted for at its distance from zero.

:func:`count_above_float32` is the same decision on a float32 block (CPUs without AMX), with the
float32 multiply's own bound: both give the same counts, those of the vectors' float64 scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import torch

from geokit.retrieval import COUNT_TILE, count_above, exact_dots

U = 2.0**-8  # bfloat16 unit round-off (8-bit significand)
PAIR_BUDGET = 4_000_000  # candidate (row, column) pairs per block (64 MB); beyond: a second pass


def screen_available() -> bool:
    """True where a bfloat16 matrix multiply is much faster than float32: CPUs with AMX tiles.
    Elsewhere screening would cost more than it saves, so ``auto`` leaves it off."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - a private API: absent or changed in another torch means "do not know"
        return False


def _round_bf16(x: torch.Tensor, up: bool) -> torch.Tensor:
    """float32 ``x`` rounded to bfloat16 towards +inf (``up``) or -inf: a comparison of a bfloat16
    block with it never drops an entry the exact threshold would keep."""
    import torch

    b = x.to(torch.bfloat16)
    wrong = b.float() < x if up else b.float() > x
    step = torch.full_like(b, float("inf") if up else float("-inf"))
    return torch.where(wrong, torch.nextafter(b, step), b)


class ScreenedGallery:
    """A normalised float32 gallery (R, D) with its bfloat16 screening copy.

    Memory: the bfloat16 copy is half the float32 gallery (plus 32 padding columns, which keep
    the inner dimension a multiple of 32 for the AMX kernels: 1026 columns ran 25 % slower).
    """

    def __init__(self, r: torch.Tensor) -> None:
        import torch

        self.r = r
        n, d = r.shape
        self.dim = d
        self.width = d + 32
        r16 = torch.zeros(n, self.width, dtype=torch.bfloat16)
        r16[:, :d] = r
        r16[:, d : d + 2] = 1.0
        self.r16_t = r16.t()
        err = torch.empty(n, dtype=torch.float32)
        for s in range(0, n, 16384):  # row blocks: no full-size float32 temporary
            err[s : s + 16384] = (r16[s : s + 16384, :d].float() - r[s : s + 16384]).norm(dim=1)
        self.max_err_r = float(err.max()) if n else 0.0
        self.max_norm_r = float(r.norm(dim=1).max()) if n else 0.0

    def shifted_scores(
        self,
        qb: torch.Tensor,
        t: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s16, err)``: the bfloat16 block of ``q·r - t`` for float32 queries ``qb`` (b, D)
        and shifts ``t`` (b,), and the per-query bound ``E`` (float64, (b,)) on its error before
        the output rounding (module docstring, step 2)."""
        import torch

        b, d = qb.shape
        q16 = torch.zeros(b, self.width, dtype=torch.bfloat16)
        q16[:, :d] = qb
        t = t.double()
        t_hi = t.to(torch.bfloat16)
        t_lo = (t - t_hi.double()).to(torch.bfloat16)
        q16[:, d] = -t_hi
        q16[:, d + 1] = -t_lo
        s16 = torch.mm(q16, self.r16_t, out=out)
        q_hat = q16[:, :d].double()
        err_in = q_hat.norm(dim=1) * self.max_err_r + (q_hat - qb.double()).norm(dim=1) * self.max_norm_r
        sum_abs = q_hat.norm(dim=1) * (self.max_norm_r + self.max_err_r) + t.abs() * (1 + U)
        err_acc = 2 * (d + 2) * 2.0**-24 * sum_abs
        err = err_in * 1.001 + err_acc + U * U * t.abs() * 2 + 1e-7
        return s16, err

    def count_above(
        self,
        qb: torch.Tensor,
        s16: torch.Tensor,
        t: torch.Tensor,
        err: torch.Tensor,
        theta: torch.Tensor,
        exclude: torch.Tensor,
        fallback: int,
    ) -> torch.Tensor:
        """Per query row, the number of references not in ``exclude`` ((b, P), −1 padded) whose
        score (:func:`exact_dots`, float64) is strictly above ``theta`` (float64, (b,)), counted on
        the shifted block ``s16`` from :meth:`shifted_scores` (shift ``t``, bound ``err``).
        Requires ``theta >= t``. Returns int64 counts."""
        import torch

        up = U / (1 - U)  # |rounded - exact| <= up * |rounded| for bfloat16 round-to-nearest
        gap = theta.double() - t.double()
        c_hi = gap + err  # > 0
        c_lo = gap - err
        hi = _round_bf16((c_hi / (1 - up)).float().unsqueeze(1), up=True)
        lo = _round_bf16(torch.where(c_lo < 0, c_lo / (1 - up), c_lo / (1 + up)).float().unsqueeze(1), up=False)
        counts, rows, cols = _decided_and_open(s16, lo, hi, exclude)
        undecided = torch.bincount(rows, minlength=len(qb))

        whole = torch.nonzero(undecided > fallback).squeeze(1)
        if len(whole):  # crowded rows: one float32 matrix multiply, then as count_above_float32
            c, rw, cw = _float32_decided_and_open(qb[whole] @ self.r.t(), theta[whole], exclude[whole], self.dim)
            counts[whole] = c
            keep = undecided[rows] <= fallback
            rows = torch.cat([rows[keep], whole[rw]])
            cols = torch.cat([cols[keep], cw])
        if len(rows):
            counts.index_add_(0, rows, above_exact(qb, self.r, rows, cols, theta.double()[rows]).to(torch.int64))
        return counts


def count_above_float32(
    qb: torch.Tensor, r: torch.Tensor, scores: torch.Tensor, theta: torch.Tensor, exclude: torch.Tensor
) -> torch.Tensor:
    """:meth:`ScreenedGallery.count_above` for a float32 block ``scores = qb @ r.T``: a reference
    farther than the multiply's own error bound (``dim·2^-24`` for unit vectors, taken twice)
    from ``theta`` is decided by the block, the few closer ones are re-scored by
    :func:`above_exact`. The same counts as the screen, on any CPU. Returns int64 counts."""
    import torch

    counts, rows, cols = _float32_decided_and_open(scores, theta, exclude, r.shape[1])
    if len(rows):
        counts.index_add_(0, rows, above_exact(qb, r, rows, cols, theta.double()[rows]).to(torch.int64))
    return counts


def float32_bound(dim: int) -> float:
    """A bound on |float32 dot product - exact| for unit vectors of ``dim``: dim·2^-24 taken
    twice over, plus slack (it also covers rounding the float64 thresholds to float32)."""
    return dim * 2.0**-23 + 1e-6


def _float32_decided_and_open(
    scores: torch.Tensor,
    theta: torch.Tensor,
    exclude: torch.Tensor,
    dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = float32_bound(dim)
    th = theta.double().unsqueeze(1)
    return _decided_and_open(scores, (th - g).float(), (th + g).float(), exclude)


def above_exact(
    q: torch.Tensor, r: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """Whether the float64 score of each (row, column) pair is above its ``theta`` (float64):
    float32 dot products first, float64 only for the pairs within their error bound of ``theta``."""
    import torch

    d32 = exact_dots(q, r, rows, cols, exact=False)
    g = float32_bound(r.shape[1])
    above = d32 > theta + g
    close = torch.nonzero((d32 - theta).abs() <= g).squeeze(1)
    if len(close):
        above[close] = exact_dots(q, r, rows[close], cols[close]) > theta[close]
    return above


def _decided_and_open(
    scores: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    exclude: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(certain, rows, cols)``: per row the number of entries ``> hi`` outside ``exclude``, and
    the (row, column) pairs in ``[lo, hi]`` outside ``exclude`` (left open). One compare pass in
    cache-sized tiles when the entries ``>= lo`` fit :data:`PAIR_BUDGET`; a second otherwise."""
    import torch

    b = len(scores)
    found = _at_least(scores, lo, budget=PAIR_BUDGET)
    if found is None:  # pathological crowding: count the certain ones with a second pass
        certain = count_above(scores, hi)
        rows, cols = cast("tuple[torch.Tensor, torch.Tensor]", _at_least(scores, lo, hi=hi))  # no budget: never None
    else:
        rows, cols = found
        above = scores[rows, cols] > hi.squeeze(1)[rows]
        certain = torch.bincount(rows[above], minlength=b)
        rows, cols = rows[~above], cols[~above]
    ex_ok = exclude >= 0
    certain = certain - (ex_ok & (scores.gather(1, exclude.clamp(min=0)) > hi)).sum(1)
    keep = ~(exclude[rows] == cols.unsqueeze(1)).any(1)
    return certain, rows[keep], cols[keep]


def _at_least(
    scores: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor | None = None, budget: int | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(rows, cols)`` of the entries ``>= lo`` (and, with ``hi``, ``<= hi``), one compare pass
    in cache-sized tiles; None once more than ``budget`` entries are found."""
    import torch

    b, n = scores.shape
    mask = torch.empty(b, COUNT_TILE, dtype=torch.bool)
    m_hi = torch.empty_like(mask) if hi is not None else None
    rows: list[torch.Tensor] = []
    cols: list[torch.Tensor] = []
    found = 0
    for j in range(0, n, COUNT_TILE):
        tile = scores[:, j : j + COUNT_TILE]
        w = tile.shape[1]
        m = torch.ge(tile, lo, out=mask[:, :w])
        if m_hi is not None and hi is not None:  # m_hi is made with hi
            m.logical_and_(torch.le(tile, hi, out=m_hi[:, :w]))
        ri, ci = torch.nonzero(m, as_tuple=True)
        found += len(ri)
        if budget is not None and found > budget:
            return None
        rows.append(ri)
        cols.append(ci + j)
    return torch.cat(rows), torch.cat(cols)

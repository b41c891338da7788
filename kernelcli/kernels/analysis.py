"""Facts about a kernel: separability, symmetry, frequency response, and a JSON-ready
description. numpy only (imported when asked): no torch here.
"""

from __future__ import annotations

from .kernel import DEFAULT_MAP, Kernel


def separable_factors(weights):
    """(column, row) 1-D factors with ``outer(column, row) == weights``, or None if rank > 1."""
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    if not w.any():
        return None
    s = np.linalg.svd(w, compute_uv=False)
    if len(s) > 1 and s[1] > 1e-9 * s[0]:
        return None
    i, j = np.unravel_index(np.argmax(np.abs(w)), w.shape)
    column, row = w[:, j], w[i, :] / w[i, j]
    sign = 1.0 if column[np.argmax(np.abs(column))] > 0 else -1.0  # prefer [1 2 1] to [-1 -2 -1]
    return column * sign + 0.0, row * sign + 0.0


def symmetry(weights) -> list[str]:
    """Names of the symmetries of a 2-D kernel (mirror, odd, rotations)."""
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    tol = 1e-12 * max(1.0, float(np.abs(w).max()))
    same = lambda a, b: a.shape == b.shape and np.allclose(a, b, atol=tol, rtol=0)  # noqa: E731
    found = []
    for flip, axis in ((np.fliplr, "left-right"), (np.flipud, "top-bottom")):
        if same(w, flip(w)):
            found.append(f"mirror {axis}")
        elif same(w, -flip(w)):
            found.append(f"odd {axis} (mirror flips the sign)")
    if same(w, np.rot90(w)):
        found.append("unchanged by 90-degree turns")
    elif same(w, np.rot90(w, 2)):
        found.append("unchanged by a half turn")
    elif same(w, -np.rot90(w, 2)):
        found.append("a half turn flips the sign")
    if same(w, w.T) and "unchanged by 90-degree turns" not in found:
        found.append("mirror on the diagonal")
    return found


def frequency(weights, n: int = 64) -> dict:
    """Summary of |DFT| of the kernel: gain at DC, peak gain and where, and a class:
    all-pass, low-pass, high-pass, band-pass, high-boost (sharpens), mixed, or zero (every
    weight 0: it passes nothing, though its flat response would look all-pass)."""
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    n = max(n, *w.shape)
    gain = np.abs(np.fft.fft2(w, (n, n)))
    f = np.fft.fftfreq(n)
    radius = np.hypot(f[:, None], f[None, :])
    dc, peak, low = gain[0, 0], gain.max(), gain.min()
    nyquist = max(gain[n // 2, n // 2], gain[0, n // 2], gain[n // 2, 0])
    if peak == 0:
        kind = "zero"
    elif peak - low <= 1e-9 * max(peak, 1e-300):
        kind = "all-pass"
    elif dc >= peak * (1 - 1e-9) and nyquist <= 0.5 * dc:
        kind = "low-pass"
    elif dc <= 1e-9 * peak:
        kind = "high-pass" if nyquist >= 0.5 * peak else "band-pass"
    elif nyquist > dc:
        kind = "high-boost"
    else:
        kind = "mixed"
    at = np.unravel_index(np.argmax(gain), gain.shape)
    return {"class": kind, "dc_gain": float(dc), "peak_gain": float(peak),
            "peak_cycles_per_pixel": round(float(radius[at]), 4), "nyquist_gain": float(nyquist)}


FREQUENCY_WORDS = {
    "all-pass": "passes every frequency alike",
    "low-pass": "keeps smooth areas, removes fine detail (blurs)",
    "high-pass": "removes flat areas, keeps the finest detail (edges, noise)",
    "band-pass": "removes flat areas and the finest noise, keeps edges of a middle scale",
    "high-boost": "keeps flat areas and amplifies fine detail (sharpens)",
    "mixed": "changes frequencies unevenly",
    "zero": "passes nothing: every weight is 0, so the result is 0 everywhere",
}


def describe(kernel: Kernel) -> dict:
    """A JSON-ready summary: the effective float weights and what can be said of them."""
    info = {
        "name": kernel.name,
        "description": kernel.description,
        "kind": kernel.kind,
        "size": list(kernel.shape),
        "map": kernel.map or DEFAULT_MAP,
        "anchor": list(kernel.anchor),
        "divisor": kernel.divisor,
        "scale": kernel.scale,
        "bias": kernel.bias,
        "aliases": list(kernel.aliases),
        "source": kernel.source,
        "overrides": kernel.overrides,
    }
    if kernel.kind == "plain":
        w = kernel.weights
        factors = separable_factors(w)
        info.update({
            "matrix": w.tolist(),
            "written": [list(r) for r in kernel.matrix],
            "sum": float(w.sum()),
            "separable": factors is not None,
            "factors": None if factors is None else {"column": factors[0].tolist(), "row": factors[1].tolist()},
            "symmetry": symmetry(w),
            "frequency": frequency(w),
            "parameters": int(w.size),
        })
    elif kernel.kind == "combined":
        info.update({
            "combine": kernel.combine,
            "parts": [{"name": p.name, "matrix": p.weights.tolist()} for p in kernel.parts],
            "parameters": sum(int(p.weights.size) for p in kernel.parts),
        })
    else:
        full = kernel.full_weights
        info.update({
            "weight": full.tolist(),
            "channels_out": full.shape[0],
            "channels_in": full.shape[1],
            "parameters": int(full.size),
        })
    return info

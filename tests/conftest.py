"""Shared helpers: an independent reference (scipy.ndimage and a plain numpy loop)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

# real S3 (SeaweedFS) and Dask servers, one each per session; the parity harness (run() through a server too)
pytest_plugins = ["tests.servers", "tests.parity"]

# kernelcli border name → scipy.ndimage mode (see shared FACTS.md §3)
SCIPY_MODE = {
    "replicate": "nearest",
    "reflect": "mirror",
    "symmetric": "reflect",
    "circular": "wrap",
    "zeros": "constant",
    "constant": "constant",
}
BORDERS = ["replicate", "reflect", "symmetric", "circular", "zeros", "constant:77"]


def scipy_correlate(image2d: np.ndarray, weights: np.ndarray, border: str) -> np.ndarray:
    """'same' correlation with the anchor at ((kh-1)//2, (kw-1)//2), in float64."""
    mode, _, value = border.partition(":")
    w = np.asarray(weights, dtype=np.float64)
    # scipy centres at k//2; kernelcli anchors even sizes up-left of centre: origin -1 there.
    origin = [-1 if k % 2 == 0 else 0 for k in w.shape]
    return ndimage.correlate(
        image2d.astype(np.float64), w, mode=SCIPY_MODE[mode], cval=float(value or 0), origin=origin
    )


def loop_correlate(x: np.ndarray, w: np.ndarray, stride=1, dilation=1, pad=0) -> np.ndarray:
    """The textbook definition: zero padding ``pad``, then a plain loop over output pixels."""
    x = np.pad(np.asarray(x, dtype=np.float64), pad)
    w = np.asarray(w, dtype=np.float64)
    kh, kw = w.shape
    oh = (x.shape[0] - dilation * (kh - 1) - 1) // stride + 1
    ow = (x.shape[1] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    out[i, j] += w[a, b] * x[i * stride + a * dilation, j * stride + b * dilation]
    return out


def run(*args, input=None):
    """The command line in-process: ``run("apply", "-k", "blur", path)``; stdout and stderr apart.
    The same call also runs through the real client and a resident server and must agree
    (tests/parity.py); the in-process result is returned."""
    from tests.parity import harness, invoke

    argv = [str(a) for a in args]
    h = harness()
    return invoke(argv, input) if h is None else h.run(argv, input)


def gray_image(folder, rng, shape, name):
    """A random 8-bit gray PNG in ``folder``; returns (path, pixels)."""
    from PIL import Image

    arr = rng.integers(0, 256, shape).astype(np.uint8)
    path = folder / name
    Image.fromarray(arr).save(path)
    return path, arr


def to_8bit(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def library():
    import kernelcli

    return kernelcli.load_library()


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(12345)

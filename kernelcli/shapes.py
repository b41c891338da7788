"""Output-size arithmetic (FACTS §4), without torch, for the engine and for ``explain``."""

from .errors import UsageError


def output_size(n: int, k: int, pad_total: int, stride: int = 1, dilation: int = 1) -> int:
    """Convolution or pooling: floor((n + pad_total − dilation·(k−1) − 1) / stride) + 1,
    as torch.nn.Conv2d, with pad_total = 2p for p pixels on each side."""
    return (n + pad_total - dilation * (k - 1) - 1) // stride + 1


def transposed_size(n: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Transposed convolution: (n−1)·stride − 2·padding + dilation·(k−1) + 1."""
    return (n - 1) * stride - 2 * padding + dilation * (k - 1) + 1


def check_pool_padding(padding: int, size: int) -> None:
    """Pooling pads at most half the window on each side (as torch.nn.MaxPool2d), so every window
    holds input: refuse more."""
    if padding > size // 2:
        raise UsageError(f"pool padding {padding} must be at most half the window ({size // 2})")

"""Accuracy with its uncertainty (torch-free, shared by the accuracy table and the selection).

An accuracy measured on n images is a binomial proportion: `wilson_interval` gives its 95% interval
(good at the 95-100% accuracies small models reach, where the normal approximation leaves [0, 100]).
Two configurations scored on the same images are compared with McNemar's exact test, which looks only at
the images they disagree on: `mcnemar_p`. The per-image correctness it needs is stored with each accuracy
row as a hex bitset (`encode_hits` / `decode_hits`).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
SIGNIFICANCE = 0.05


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of correct/n, in percent; (nan, nan) when n is 0."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def mcnemar_p(hits_a: np.ndarray, hits_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for two classifiers' correctness on the same images.

    Under "equally accurate", each image only one of them gets right is a fair coin: the p-value is the
    binomial tail of the smaller discordant count, doubled (capped at 1).
    """
    a = np.asarray(hits_a, dtype=bool)
    b = np.asarray(hits_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same images: {a.shape} vs {b.shape}")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    smaller = min(only_a, only_b)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1)) / 2.0**discordant
    return min(1.0, 2.0 * tail)


def encode_hits(hits: np.ndarray) -> str:
    """Per-image correctness as hex text (8 images a byte), storable in a table cell."""
    return np.packbits(np.asarray(hits, dtype=bool)).tobytes().hex()


def decode_hits(text: str, n: int) -> np.ndarray | None:
    """The correctness bitset of `encode_hits`, or None when the text is missing or not n images long."""
    if not isinstance(text, str) or not text or n <= 0:
        return None
    try:
        raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    except ValueError:
        return None
    if len(raw) != (n + 7) // 8:
        return None
    return np.unpackbits(raw)[:n].astype(bool)

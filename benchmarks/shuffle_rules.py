"""Can ShuffleNetV2's channel shuffle be sliced by a prefix rule? (docs/ARCHITECTURE.md, channel shuffle)

A stage: a stride-2 block concatenates two branch outputs P and Q (n channels each) and shuffles them (2
groups); each stride-1 block splits the stream with chunk(2), keeps the first half (identity), runs the
second through its branch (output R_t, n channels), concatenates and shuffles. Channels carry ids; a slim
width is consistent when each chunk half at that width holds only channels of the same half at full width.

    python benchmarks/shuffle_rules.py
"""

from __future__ import annotations

import itertools


def shuffle(ids: list[int]) -> list[int]:
    """torchvision's channel_shuffle with 2 groups: view(2, C/2) -> transpose -> flatten."""
    half = len(ids) // 2
    return [ids[i // 2 + (i % 2) * half] for i in range(len(ids))]


def block_prefix(n: int, k: int, blocks: int) -> list[int]:
    """The first k/blocks channels of each of `blocks` equal blocks (the grouped-conv rule)."""
    per = n // blocks
    return [b * per + i for b in range(blocks) for i in range(k // blocks)]


def prefix_rule(n: int, k: int, blocks: int, depth: int) -> str:
    """Every conv output space keeps `blocks`-block prefixes; where the first inconsistency appears."""
    fresh = itertools.count()
    spaces = [[next(fresh) for _ in range(n)] for _ in range(depth + 2)]
    full = shuffle(spaces[0] + spaces[1])
    slim = shuffle([s[i] for s in spaces[:2] for i in block_prefix(n, k, blocks)])
    for t in range(depth):
        f1, f2, m = full[:n], full[n:], len(slim) // 2
        s1, s2 = slim[:m], slim[m:]
        if not (set(s1) <= set(f1) and set(s2) <= set(f2)):
            return f"wrong chunk half at block {t + 1}"
        r = spaces[t + 2]
        full = shuffle(f1 + r)
        slim = shuffle(s1 + [r[i] for i in block_prefix(n, len(s1), blocks)])
    return "consistent"


def tied_sets_consistent(kept: list[int], n: int, depth: int) -> bool:
    """Index sets: P and Q keep positions `kept`, each branch output the positions its identity half keeps
    (so the shuffle's interleave pairs them); every block's chunk must split the kept channels evenly."""
    x1 = kept
    for _ in range(depth):
        stream = sorted([2 * a for a in x1] + [2 * a + 1 for a in x1])
        x1, x2 = [p for p in stream if p < n], [p for p in stream if p >= n]
        if len(x1) != len(x2):
            return False
    return True


def main() -> None:
    for blocks in (1, 2, 4, 8):
        print(f"n=16, k=8, 4 stride-1 blocks, {blocks}-block prefixes: {prefix_rule(16, 8, blocks, 4)}")
    for n, depth in ((12, 3), (16, 3), (16, 7)):
        widths = [
            k
            for k in range(1, n)
            if any(tied_sets_consistent(list(c), n, depth) for c in itertools.combinations(range(n), k))
        ]
        print(f"n={n}, {depth} stride-1 blocks: widths with a consistent index set: {widths or 'none'}")


if __name__ == "__main__":
    main()

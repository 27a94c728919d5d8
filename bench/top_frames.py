"""Summarise py-spy's collapsed stacks (`-f raw`): the share of samples per package (self time)
and the functions with the most inclusive time.

    python bench/top_frames.py PROFILE [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_PKG = re.compile(r"\((?:.*/site-packages/|.*/lib/python3\.\d+/|.*/work/[^/]+/)?([^/ ]+)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in open(args.profile):
        stack, _, count = line.rstrip().rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        m = _PKG.search(leaf)
        own[m.group(1) if m else leaf] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples\nself time by package or module:")
    for name, n in own.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("inclusive time by function:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()

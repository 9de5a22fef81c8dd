"""Summarise a ``--cpu-profile`` file: the frames with the most samples, by self and inclusive time.

    python -m bench.cpuprof /tmp/prof/gateway-1234.txt [top]
"""

from __future__ import annotations

import collections
import sys


def _short(frame: str) -> str:
    name, _, loc = frame.partition(" (")
    return f"{name} ({loc.rstrip(')').rsplit(':', 1)[0]})"


def main(path: str, top: int = 30) -> None:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = [_short(x) for x in stack.split(";")]
            total += int(n)
            own[frames[-1]] += int(n)
            for x in set(frames):
                incl[x] += int(n)
    print(f"{total} samples (a 1 ms CPU-time timer)")
    for title, counter in (("self", own), ("inclusive", incl)):
        print(f"-- {title}")
        for k, v in counter.most_common(top):
            print(f"{100 * v / max(total, 1):5.1f}%  {k}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)

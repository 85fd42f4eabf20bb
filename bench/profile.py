"""Summarise py-spy's collapsed stacks (``py-spy record --format raw``): where the time goes.

    python -m bench.profile /tmp/prof/fanout-0-switchboard.txt [--top 30] [--match server/]

Prints the functions with the most *self* samples (the leaf of a stack) and the most
*inclusive* samples (anywhere on the stack), as a share of all samples. ``bench.run
--profile DIR`` records one such file per run (numbers from a profiled run are not results:
py-spy pauses the process to sample it).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        count = int(m.group("count"))
        frames = [_name(f) for f in m.group("stack").split(";") if f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count
    return total, self_counts, incl_counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="", help="inclusive table: only names containing this")
    args = p.parse_args(argv)
    for path in args.files:
        total, self_counts, incl_counts = summarise(path)
        print(f"== {path} ({total} samples)")
        if not total:
            continue
        print("-- self (leaf) time")
        for name, count in self_counts.most_common(args.top):
            print(f"{100 * count / total:6.1f}%  {name}")
        print("-- inclusive time" + (f" (names containing {args.match!r})" if args.match else ""))
        shown = 0
        for name, count in incl_counts.most_common():
            if args.match and args.match not in name:
                continue
            print(f"{100 * count / total:6.1f}%  {name}")
            shown += 1
            if shown >= args.top:
                break
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # piped into head
        raise SystemExit(0) from None

"""Progress bars for long commands: drawn on stderr when it is a terminal, silent in pipes and logs.

tqdm with ``disable=not sys.stderr.isatty()`` does both: in a pipe nothing is written at all, so the
output a script parses is the same with and without the bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def bar(total: int | None, desc: str, unit: str = "it"):
    """A tqdm bar on stderr, disabled unless stderr is a terminal. Use as a context manager."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                dynamic_ncols=True, leave=True)


def track(items: Iterable[T], total: int | None, desc: str, unit: str = "it") -> Iterator[T]:
    """Yield ``items`` while advancing a bar by one per item."""
    with bar(total, desc, unit) as b:
        for item in items:
            yield item
            b.update(1)

"""The progress bar shared by both ``train_``\\ s (Flux's ``@withprogress``).

A ``tqdm`` bar on stderr when stderr is a terminal; ``progress=True``/``False``
forces it on or off.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["progress_bar", "wants_progress"]


def wants_progress(progress: bool | None) -> bool:
    """Whether to show a bar: ``progress`` if given, else whether stderr is a terminal.

    Only rank 0 of a ``torch.distributed`` job shows one.
    """
    from fluxtrain.distributed import is_rank0

    if not is_rank0():
        return False
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextlib.contextmanager
def progress_bar(
    data: Iterable[Any], progress: bool | None = None, desc: str = "train_"
) -> Iterator[Iterable[Any]]:
    """Iterate ``data`` with a progress bar (closed on exit, also after an error).

    The bar shows the fraction done when ``data`` has a length.

    >>> with progress_bar([1, 2, 3], progress=False) as items:
    ...     print(sum(items))
    6
    """
    if not wants_progress(progress):
        yield data
        return
    from tqdm import tqdm

    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(data, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()

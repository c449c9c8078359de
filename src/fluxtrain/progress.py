"""What both ``train_``\\ s share: the progress bar and the batch rule.

The progress bar (Flux's ``@withprogress``): a ``tqdm`` bar on stderr when
stderr is a terminal; ``progress=True``/``False`` forces it on or off.

The batch rule (DESIGN.md "Data and batches"): a tuple or a list item of
``data`` is splatted into the loss, so that the lists a torch ``DataLoader``
yields work (:func:`batch_args`); any other item, a Mapping included, is
passed whole as one argument.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["progress_bar", "wants_progress", "batch_args", "check_loss_call"]


def batch_args(d: Any) -> tuple[Any, ...]:
    """The loss's arguments for one data item: a tuple's or a list's elements, else ``(d,)``.

    >>> batch_args((1, 2)), batch_args([1, 2]), batch_args({"x": 1}), batch_args(3)
    ((1, 2), (1, 2), ({'x': 1},), (3,))
    """
    if isinstance(d, tuple):
        return d
    if isinstance(d, list):
        return tuple(d)
    return (d,)


def check_loss_call(loss: Callable[..., Any], args: tuple[Any, ...], call: str,
                    hint: str = "") -> None:
    """Raise a ``TypeError`` saying how ``train_`` calls ``loss`` when ``loss`` cannot take
    ``args`` (checked against its signature; nothing is called).

    ``call`` shows the call (``"loss(model, *item)"``); ``hint`` is added to the message.
    Loss functions whose signature cannot be read are not checked.

    >>> check_loss_call(lambda m, x: 0, ("model", 1, 2), "loss(model, *item)")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: train_ calls loss(model, *item), here with 3 arguments, but the loss takes (m, x)...
    """
    try:
        sig = inspect.signature(loss)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args)
    except TypeError as e:
        raise TypeError(
            f"train_ calls {call}, here with {len(args)} argument"
            f"{'' if len(args) == 1 else 's'}, but the loss takes {sig}: {e}{hint}"
        ) from None


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

"""Exceptions and warnings shared by every layer of fluxtrain."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

__all__ = [
    "DomainError",
    "FluxDeprecationWarning",
    "external_stacklevel",
    "reset_deprecation_sites",
    "warn_deprecated",
    "warn_deprecated_external",
]


class DomainError(ValueError):
    """A value outside the domain a function accepts.

    Julia's ``DomainError``: raised for a negative learning rate, a non-finite
    loss during ``train_``, or a non-finite gradient norm in ``ClipNorm``.

    >>> from fluxtrain.errors import DomainError
    >>> issubclass(DomainError, ValueError)
    True
    """


class FluxDeprecationWarning(DeprecationWarning):
    """Warns about an implicit-era (Flux 0.13) construct and names its replacement.

    Every message names the explicit-style replacement and mentions
    ``fluxtrain-migrate``, the codemod that rewrites old scripts.
    """


_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _first_external(f: FrameType | None) -> tuple[FrameType | None, int]:
    """The first frame from ``f`` up that is outside fluxtrain, and how many frames above
    ``f`` it is (0: ``f`` itself)."""
    up = 0
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
        up += 1
    return f, up


def external_stacklevel() -> int:
    """The ``stacklevel`` (for the caller of this helper) of the first frame outside fluxtrain.

    Lets a warning point at the user's line however deep inside fluxtrain
    (``fluxtrain.setup`` -> ``optimisers.setup``, ``train_`` -> ``setup`` ...) it is raised.
    """
    return 1 + _first_external(sys._getframe(1))[1]


# Call sites (filename, lineno, message key) that have already been warned.
_warned_sites: set[tuple[str, int, str]] = set()


def warn_deprecated(message: str, *, stacklevel: int = 2, key: str | None = None) -> None:
    """Issue a :class:`FluxDeprecationWarning` once per call site.

    ``stacklevel`` counts like :func:`warnings.warn`'s: 2 points at the caller of
    the function that calls ``warn_deprecated``. ``key`` distinguishes different
    warnings issued from the same line (defaults to the message).
    """
    try:
        frame: FrameType | None = sys._getframe(stacklevel)
    except ValueError:  # stack shallower than stacklevel
        frame = None
    _warn_once(frame, message, key, stacklevel + 1)


def warn_deprecated_external(message: str, *, key: str | None = None) -> None:
    """:func:`warn_deprecated` pointing at the first frame outside fluxtrain (the user's
    line), found in one walk up the stack.

    What ``warn_deprecated(message, stacklevel=external_stacklevel(), key=key)`` does,
    in one pass: an old training loop calls the deprecated function every step, and
    all but the first call only look the call site up.
    """
    frame, up = _first_external(sys._getframe(1))
    _warn_once(frame, message, key, up + 2)


def _warn_once(frame: FrameType | None, message: str, key: str | None,
               stacklevel: int) -> None:
    """Warn at ``frame``'s line unless that site was warned already; ``stacklevel`` counts
    from the caller of this function, as ``warnings.warn`` would there."""
    site = (frame.f_code.co_filename, frame.f_lineno, key or message) if frame is not None \
        else ("<unknown>", 0, key or message)
    if site in _warned_sites:
        return  # first: an old training loop passes here every step
    if _is_nonzero_rank():
        return  # one process speaks for all in data-parallel training
    _warned_sites.add(site)
    warnings.warn(message, FluxDeprecationWarning, stacklevel=stacklevel + 1)


def _is_nonzero_rank() -> bool:
    """True in every process but rank 0 of an initialised torch.distributed group."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def reset_deprecation_sites() -> None:
    """Forget which call sites have been warned (for tests and notebooks)."""
    _warned_sites.clear()

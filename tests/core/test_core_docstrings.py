"""The runnable examples in the rule docstrings (and the DecayDescent user-rule
example in base.py) are run here, so they cannot go stale."""

from __future__ import annotations

import doctest

import pytest

import fluxtrain.core.base
import fluxtrain.core.hyper
import fluxtrain.core.rules


@pytest.mark.parametrize(
    "module", [fluxtrain.core.rules, fluxtrain.core.base, fluxtrain.core.hyper],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0

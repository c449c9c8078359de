"""The public ``train_``, ``update_``, ``gradient`` and ``withgradient`` of both styles.

As in Flux 0.13.9+, one function serves both styles; the arguments decide:

* ``train_(loss, ps: Params, data, opt: old optimiser, cb=None)`` -> implicit
  (deprecated: warns); ``train_(loss, model, data, opt_state)`` -> explicit.
* ``update_(opt: old optimiser, ps: Params, gs: Grads)`` and
  ``update_(opt, x: Tensor, g)`` -> implicit (deprecated: warns);
  ``update_(opt_state, model, grads)`` -> explicit.
* ``gradient(f, ps: Params)`` (``f`` of no arguments) -> :class:`Grads`
  (deprecated: warns); ``gradient(f, *args)`` -> a tuple of gradient trees.

Mixing the styles gives an error that says what to write instead (Flux's
list in reference flux-implicit.md §5.5). Deprecation warnings are
:class:`~fluxtrain.FluxDeprecationWarning`, once per call site, pointing at
the caller's line; each names the explicit replacement and ``fluxtrain-migrate``.
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fluxtrain import explicit, gradients
from fluxtrain.core.base import AbstractRule, maywrite
from fluxtrain.errors import external_stacklevel, warn_deprecated_external
from fluxtrain.implicit.gradient import (
    gradient_implicit,
    pullback_implicit,
    withgradient_implicit,
)
from fluxtrain.implicit.params import Grads, Params
from fluxtrain.implicit.train import train_implicit, update_implicit
from fluxtrain.optimise.optimisers import AbstractOptimiser

__all__ = ["train_", "update_", "gradient", "withgradient", "pullback"]

_MIGRATE = "`fluxtrain-migrate` rewrites old scripts to the explicit style"
def _is_ndarray(x: object) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


def _is_explicit_grads(gs: object) -> bool:
    """A gradient that looks like the explicit style's (a tree, or names to gradients)."""
    if isinstance(gs, (tuple, list)):
        return True
    if isinstance(gs, Mapping) and not isinstance(gs, Grads):
        return any(not isinstance(k, torch.Tensor) and not _is_ndarray(k) for k in gs)
    return type(gs).__name__ == "StateTree"


_E_PARAMS_STATE = (
    "can't mix implicit Params with explicit state! train_(loss, params(model), data, opt) "
    "needs an old optimiser from fluxtrain.optimise (e.g. fluxtrain.Adam()) as its 4th "
    "argument, got {got}. Better: use the explicit style, with the model itself as 2nd "
    "argument: opt_state = fluxtrain.setup(rule, model); "
    "train_(lambda m, x, y: loss(m, x, y), model, data, opt_state). " + _MIGRATE
)
_E_PARAMS_RULE = (
    "can't mix implicit Params with the explicit rule {got} from fluxtrain.optimisers! "
    "With params(model) the optimiser must be an old one from fluxtrain.optimise "
    "(fluxtrain.{name}()). Better: use the explicit style, with the model itself as 2nd "
    "argument: opt_state = fluxtrain.setup({got}, model); "
    "train_(lambda m, x, y: loss(m, x, y), model, data, opt_state). " + _MIGRATE
)


# ---------------------------------------------------------------------------- train_
def train_(
    loss: Callable[..., Any],
    model: Any,
    data: Any,
    opt: Any,
    cb: Any = None,
    *,
    progress: bool | None = None,
) -> None:
    """Train for one pass over ``data`` (Flux's ``train!``), in either style.

    Explicit: ``train_(loss, model, data, opt_state)`` with ``loss(model, *d)``.
    Implicit (deprecated): ``train_(loss, params(model), data, opt, cb=None)``
    with ``loss(*d)`` closing over the model, ``opt`` an old optimiser from
    ``fluxtrain.optimise`` and ``cb`` a callback or list of callbacks.

    >>> import warnings, torch, fluxtrain
    >>> warnings.simplefilter("ignore")
    >>> w = torch.zeros(1, dtype=torch.float64)
    >>> ps = fluxtrain.params(w)
    >>> fluxtrain.train_(lambda x: (w * x).sum(), ps, [1.0], fluxtrain.Descent(0.1))
    >>> w.tolist()
    [-0.1]
    """
    if isinstance(data, (Params, AbstractOptimiser)) or isinstance(model, AbstractOptimiser):
        what = "Params" if isinstance(data, Params) else "an old optimiser"
        where = "2nd argument (model)" if isinstance(model, AbstractOptimiser) else \
            "3rd argument (data)"
        got = "an old optimiser" if isinstance(model, AbstractOptimiser) else what
        raise TypeError(
            f"train_: the {where} is {got}; did you swap the arguments? The order is "
            "train_(loss, params(model), data, opt) (implicit) or "
            "train_(loss, model, data, opt_state) (explicit)"
        )
    _check_train_args(loss, data)
    if isinstance(model, Params):
        if isinstance(opt, AbstractOptimiser):
            warn_deprecated_external(
                "train_(loss, ps, data, opt) with Params is the implicit style of Flux 0.13 and is "
                "deprecated: use opt_state = fluxtrain.setup(opt, model) and "
                "train_(lambda m, *d: loss(m, *d), model, data, opt_state), with the model as "
                "the loss's first argument; callbacks go in your own for loop. " + _MIGRATE,
                key="train_",
            )
            return train_implicit(loss, model, data, opt, cb, progress=progress)
        if isinstance(opt, AbstractRule):
            raise TypeError(_E_PARAMS_RULE.format(got=repr(opt), name=type(opt).__name__))
        raise TypeError(_E_PARAMS_STATE.format(got=type(opt).__name__))
    if isinstance(opt, AbstractOptimiser) and isinstance(loss, Params):
        raise TypeError(
            "train_: the Params come second, train_(loss, ps, data, opt); got Params first"
        )
    _check_explicit_train_args(loss, model, data, opt)
    return explicit.train_explicit(loss, model, data, opt, cb=cb, progress=progress)


def _is_state(x: object) -> bool:
    """A state tree from setup, a Leaf, a rule or an old optimiser (what goes 4th)."""
    return type(x).__name__ in ("StateTree", "Leaf") or isinstance(
        x, (AbstractRule, AbstractOptimiser)
    )


def _check_explicit_train_args(loss: Any, model: Any, data: Any, opt: Any) -> None:
    """Arguments of the explicit ``train_`` swapped or of the wrong kind: a clear error."""
    order = "the order is train_(loss, model, data, opt_state)"
    if isinstance(loss, torch.nn.Module) and callable(model) \
            and not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"train_(loss, model, data, opt_state): the first argument is an nn.Module and the "
            f"second a function; did you swap loss and model? {order}"
        )
    if _is_state(model) or isinstance(opt, torch.nn.Module):
        what = (
            f"2nd argument (model) is {type(model).__name__}, an optimiser state or rule"
            if _is_state(model) else "4th argument (opt_state) is an nn.Module"
        )
        raise TypeError(
            f"train_(loss, model, data, opt_state): the {what}; did you swap model and "
            f"opt_state? {order}"
        )
    if _is_state(data):
        raise TypeError(
            f"train_(loss, model, data, opt_state): the 3rd argument (data) is "
            f"{type(data).__name__}, an optimiser state or rule; did you swap data and "
            f"opt_state? {order}"
        )
    if not _takes_arguments(loss):
        raise TypeError(
            "train_(loss, model, data, opt_state): the loss takes no arguments, but the "
            "explicit train_ calls loss(model, *batch) for each batch of data: write it as "
            "loss(m, x, y) using m instead of the global model. A loss of no arguments that "
            "closes over the model is the implicit style: train_(loss, fluxtrain.params(model), "
            "data, opt) with an old optimiser such as fluxtrain.Adam() (deprecated). " + _MIGRATE
        )


def _check_train_args(loss: Any, data: Any) -> None:
    """Refuse a non-callable loss or non-iterable data before anything runs."""
    if not callable(loss):
        raise TypeError(
            f"train_: the loss (1st argument) must be callable, got {type(loss).__name__}; "
            "the order is train_(loss, model, data, opt_state)"
        )
    t = type(data)
    if not (hasattr(t, "__iter__") or hasattr(t, "__getitem__")):  # no iter(): a DataLoader
        raise TypeError(
            f"train_: data (3rd argument) must be iterable (a list, generator or DataLoader "
            f"of items), got {type(data).__name__}; for a single item use [item]"
        )


# ---------------------------------------------------------------------------- update_
_MISSING: Any = object()


def update_(opt: Any, model: Any, grads: Any = _MISSING) -> Any:
    """One optimisation step in place (Flux's ``update!``), in either style.

    Explicit: ``update_(opt_state, model, grad)`` -> ``(opt_state, model)``.
    Implicit (deprecated): ``update_(opt, ps, gs)`` with an old optimiser,
    ``Params`` and ``Grads`` (returns ``ps``), or ``update_(opt, x, g)`` for
    one tensor (returns ``x``). Deprecated two-argument form (Flux's
    ``update!(x, x̄)``): ``update_(x, dx)`` does ``x -= dx`` in place on one
    tensor or numpy array and returns ``x``.

    >>> import warnings, torch, fluxtrain
    >>> warnings.simplefilter("ignore")
    >>> x = torch.tensor([1.0], dtype=torch.float64)
    >>> _ = fluxtrain.update_(fluxtrain.Descent(0.5), x, torch.tensor([1.0], dtype=torch.float64))
    >>> x.tolist()
    [0.5]
    >>> _ = fluxtrain.update_(x, torch.tensor([0.25], dtype=torch.float64))  # x -= dx
    >>> x.tolist()
    [0.25]
    """
    if grads is _MISSING:
        return _subtract_deprecated(opt, model)
    if isinstance(model, AbstractOptimiser) or (
        isinstance(opt, AbstractOptimiser) and isinstance(grads, Params)
    ):
        raise TypeError(
            f"update_({type(opt).__name__}, {type(model).__name__}, {type(grads).__name__}): "
            "the arguments are in the wrong order; the implicit style is update_(opt, ps, gs) "
            "with an old optimiser first, Params second and Grads third"
        )
    if isinstance(opt, AbstractOptimiser):
        if isinstance(model, Params):
            if type(grads) is not Grads and _is_explicit_grads(grads):
                raise TypeError(
                    "can't mix implicit Params with explicit gradients! update_(opt, ps, gs) "
                    f"was given {type(grads).__name__} gradients.\n"
                    "  * The implicit style needs implicit gradients: "
                    "gs = gradient(lambda: loss(model, x), ps), then update_(opt, ps, gs).\n"
                    "  * The explicit style needs the model itself: opt_state = "
                    "fluxtrain.setup(opt, model), grad = gradient(lambda m: loss(m, x), "
                    "model)[0], then update_(opt_state, model, grad). " + _MIGRATE
                )
            _warn_implicit_update()
            return update_implicit(opt, model, grads)
        if isinstance(model, torch.Tensor) or _is_ndarray(model):
            if isinstance(grads, Grads):
                if model not in grads:
                    raise KeyError(
                        "update_(opt, x, gs): x is not one of the parameters of these Grads"
                    )
                grads = grads[model]
            _warn_implicit_update()
            if _is_ndarray(model):
                x = torch.from_numpy(model)  # type: ignore[arg-type]
                update_implicit(opt, x, grads)
                return model
            return update_implicit(opt, model, grads)
        raise TypeError(
            f"Invalid input to update_: an old optimiser ({type(opt).__name__}) was given a "
            f"{type(model).__name__} (a whole model) as its 2nd argument.\n"
            "  * The implicit style needs update_(opt, ps, gs) with ps = params(model) and "
            "gs = gradient(lambda: loss(model, x), ps).\n"
            "  * The explicit style needs opt_state = fluxtrain.setup(opt, model) once, then "
            "update_(opt_state, model, grad) with grad = gradient(lambda m: loss(m, x), "
            "model)[0]. " + _MIGRATE
        )
    if isinstance(model, Params):
        kind = "rule" if isinstance(opt, AbstractRule) else "state"
        raise TypeError(
            f"can't mix implicit Params with an explicit {kind} ({type(opt).__name__})! "
            "update_(opt, ps, gs) needs an old optimiser from fluxtrain.optimise "
            "(e.g. fluxtrain.Adam()). Better: opt_state = fluxtrain.setup(rule, model) and "
            "update_(opt_state, model, grad) with the model itself. " + _MIGRATE
        )
    if isinstance(grads, Grads):
        raise TypeError(
            "the explicit update_(opt_state, model, grad) cannot be used with implicit "
            "gradients (Grads from gradient(f, ps)): take the gradient with respect to the "
            "model, grad = gradient(lambda m: loss(m, x), model)[0]. " + _MIGRATE
        )
    if isinstance(opt, AbstractRule):
        raise TypeError(
            f"update_ needs the state tree from setup(rule, model), got the rule {opt!r}; "
            "call opt_state = fluxtrain.setup(rule, model) once before the training loop"
        )
    if (
        type(grads) is tuple
        and len(grads) >= 1
        and not isinstance(model, (tuple, list))
        and _looks_like_model_grad(grads[0], model)
    ):
        warnings.warn(
            "explicit update_(opt_state, model, grad) wants the gradient for the model alone, "
            "not the whole tuple returned by gradient(lambda m: loss(m, x, y), model): "
            "you probably want grads[0], which is used now.",
            UserWarning,
            stacklevel=external_stacklevel(),
        )
        grads = grads[0]
    return explicit.update_explicit(opt, model, grads)


_UPDATE_2 = (
    "update_(x, dx) with two arguments is deprecated (Flux 0.13 removed update!(x, x̄), "
    "which was not used internally): write `x -= dx` instead, inside `with torch.no_grad():` "
    "when x is a Parameter. " + _MIGRATE
)


def _subtract_deprecated(x: Any, dx: Any) -> Any:
    """The deprecated ``update_(x, dx)``: warn, then ``x -= dx`` in place; returns ``x``.

    ``x`` is one tensor (an ``nn.Parameter`` too) or numpy array; ``dx`` a tensor,
    array or number that broadcasts to ``x``'s shape. Everything is checked before
    ``x`` changes.
    """
    if not isinstance(x, torch.Tensor) and not _is_ndarray(x):
        if isinstance(x, (AbstractOptimiser, AbstractRule)) or type(x).__name__ == "StateTree" \
                or isinstance(x, (dict, tuple, list)) and isinstance(dx, torch.nn.Module):
            raise TypeError(
                f"update_ was given 2 arguments ({type(x).__name__}, {type(dx).__name__}); it "
                "takes 3: update_(opt_state, model, grad) (explicit) or update_(opt, ps, gs) "
                "(implicit). The two-argument update_(x, dx) only subtracts dx from one tensor"
            )
        what = "Params" if isinstance(x, Params) else type(x).__name__
        raise TypeError(
            f"update_(x, dx) with two arguments (deprecated) subtracts dx from ONE tensor or "
            f"numpy array x in place; got x = {what}. For many parameters write "
            "`for p in ps: p -= gs[p]` under torch.no_grad(), or use "
            "update_(fluxtrain.Descent(1.0), ps, gs); for a model use the explicit "
            "update_(opt_state, model, grad)"
        )
    if isinstance(dx, (Params, Grads)) or isinstance(dx, torch.nn.Module):
        raise TypeError(
            f"update_(x, dx): dx must be a tensor, numpy array or number (what is subtracted "
            f"from x), got {type(dx).__name__}"
        )
    warn_deprecated_external(_UPDATE_2, key="update_(x, dx)")
    t: torch.Tensor
    if isinstance(x, torch.Tensor):
        t = x
    else:
        if not x.flags.writeable:
            raise ValueError(
                "update_(x, dx): x is a read-only numpy array (writeable=False) and cannot be "
                "changed in place; compute x - dx instead"
            )
        try:
            t = torch.from_numpy(x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"update_(x, dx): this numpy array x cannot be updated: {e}") from None
    if not maywrite(t) or torch._debug_has_internal_overlap(t) == 1:
        raise ValueError(
            f"update_(x, dx): x (shape {tuple(t.shape)}) cannot be written in place (a "
            "read-only, inference-mode or expanded tensor); compute x - dx instead"
        )
    try:
        if isinstance(dx, torch.Tensor):
            d = dx.detach()
        elif _is_ndarray(dx):
            d = torch.from_numpy(dx) if dx.flags.writeable else torch.as_tensor(dx.copy())
        else:
            d = torch.as_tensor(dx)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"update_(x, dx): dx must be a tensor, numpy array or number, got "
            f"{type(dx).__name__} ({e})"
        ) from None
    if d.dim() > 0 and d.device != t.device:
        raise ValueError(
            f"update_(x, dx): x is on {t.device} but dx on {d.device}; move dx first "
            f"(dx.to(x.device))"
        )
    try:
        shape = torch.broadcast_shapes(t.shape, d.shape)
    except RuntimeError:
        shape = None
    if shape != t.shape:
        raise ValueError(
            f"update_(x, dx): dx of shape {tuple(d.shape)} cannot be subtracted from x of "
            f"shape {tuple(t.shape)} (it must have x's shape or broadcast to it)"
        )
    if not torch.can_cast(torch.result_type(t, d), t.dtype):
        raise TypeError(
            f"update_(x, dx): x -= dx would turn x of dtype {t.dtype} into "
            f"{torch.result_type(t, d)}; convert x or dx first"
        )
    with torch.no_grad():
        t.sub_(d)
    return x


def _looks_like_model_grad(g: object, model: object) -> bool:
    if isinstance(model, torch.nn.Module):
        return g is None or type(g).__name__ == "StateTree" or isinstance(g, Mapping)
    if isinstance(model, Mapping):
        return g is None or isinstance(g, Mapping)
    return True


_IMPLICIT_GRADIENT: dict[str, str] = {}  # per function name: the implicit-style warning
_IMPLICIT_UPDATE = (
    "update_(opt, ps, gs) with Params (or update_(opt, x, g)) is the implicit style of "
    "Flux 0.13 and is deprecated: use opt_state = fluxtrain.setup(opt, model) once, then "
    "update_(opt_state, model, grad) with grad = gradient(lambda m: loss(m, x), model)[0]. "
    + _MIGRATE
)


def _warn_implicit_update() -> None:
    # (every step of an old training loop passes here: the message is built once)
    warn_deprecated_external(_IMPLICIT_UPDATE, key="update_")


# ---------------------------------------------------------------------------- gradient
def _is_implicit_call(args: tuple[Any, ...], name: str) -> bool:
    if any(isinstance(a, Params) for a in args):
        if len(args) != 1:
            raise TypeError(
                f"{name}(f, ps) with Params takes exactly one Params and f of no arguments; "
                f"got {len(args)} arguments after f. For the explicit style pass the model "
                f"and data instead: {name}(lambda m, x: loss(m, x), model, x)"
            )
        return True
    return False


def _warn_implicit_gradient(name: str) -> None:
    message = _IMPLICIT_GRADIENT.get(name)
    if message is None:  # (built once per name: an old loop passes here every step)
        message = _IMPLICIT_GRADIENT[name] = (
            f"{name}(f, ps) with Params and a function of no arguments is the implicit style "
            f"of Flux 0.13 and is deprecated: use {name}(lambda m: loss(m, x), model) and take "
            "element [0] of the gradient (a tree shaped like the model). " + _MIGRATE)
    warn_deprecated_external(message, key=name)


_ANY_ARGS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


def _takes_arguments(f: Callable[..., Any]) -> bool:
    """Whether ``inspect.signature(f)`` lists parameters (True when it cannot tell).

    A plain function or lambda is answered from its code object (``inspect.signature``
    costs tens of microseconds, on every gradient call); anything else, or a function
    whose signature was changed (``__wrapped__``, ``__signature__``), asks inspect.
    """
    # (a plain function's attributes live in its __dict__: two lookups there instead of
    # two failing hasattr, which each raise and catch an AttributeError)
    if type(f) is types.FunctionType and "__wrapped__" not in f.__dict__ \
            and "__signature__" not in f.__dict__:
        code = f.__code__
        return bool(code.co_argcount or code.co_kwonlyargcount or code.co_flags & _ANY_ARGS)
    try:
        return bool(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        return True


_FUNCTIONS = (types.FunctionType, types.MethodType, types.BuiltinFunctionType)


def _check_function_first(f: Any, args: tuple[Any, ...], name: str) -> None:
    """``f`` not a function, or a model first and the function after it: a ``TypeError``."""
    if not callable(f):
        hint = " (did you swap them? the Params come second)" if isinstance(f, Params) else ""
        raise TypeError(
            f"{name}(f, *args): f (the 1st argument) must be the function to differentiate, "
            f"got {type(f).__name__}, which is not callable{hint}; e.g. "
            f"{name}(lambda m: loss(m, x), model)"
        )
    if isinstance(f, torch.nn.Module):
        for i, a in enumerate(args):
            if isinstance(a, _FUNCTIONS):
                raise TypeError(
                    f"{name}(f, *args): the 1st argument is an nn.Module "
                    f"({type(f).__name__}) and argument {i + 1} a function; did you swap them? "
                    f"The function comes first: {name}(lambda m: loss(m, x), model)"
                )


def _check_zero_arg_misuse(f: Callable[..., Any], args: tuple[Any, ...], name: str) -> None:
    """A function of no arguments given a model: the implicit style without Params."""
    if len(args) != 1 or not callable(f):
        return
    if _takes_arguments(f):
        return
    raise TypeError(
        f"{name}(f, x): f takes no arguments, which is the implicit style; it needs Params: "
        f"{name}(f, fluxtrain.params(model)) (deprecated). The explicit style passes the "
        f"model to f: {name}(lambda m: loss(m, x), model). " + _MIGRATE
    )


def gradient(f: Callable[..., Any], *args: Any) -> Any:
    """Gradient of a scalar function, in either style.

    Explicit: ``gradient(f, *args)`` -> a tuple with one gradient tree per argument.
    Implicit (deprecated): ``gradient(f, ps)`` with ``f`` of no arguments and
    ``ps`` a :class:`Params` -> :class:`Grads`.

    >>> import warnings, torch, fluxtrain
    >>> warnings.simplefilter("ignore")
    >>> w = torch.tensor([3.0])
    >>> fluxtrain.gradient(lambda: (w * w).sum(), fluxtrain.Params([w]))[w]
    tensor([6.])
    >>> fluxtrain.gradient(lambda v: (v * v).sum(), w)
    (tensor([6.]),)
    """
    if _is_implicit_call(args, "gradient"):
        _warn_implicit_gradient("gradient")
        return gradient_implicit(f, args[0])
    _check_function_first(f, args, "gradient")
    _check_zero_arg_misuse(f, args, "gradient")
    return gradients.gradient_explicit(f, *args)


def withgradient(f: Callable[..., Any], *args: Any) -> Any:
    """Value and gradient: ``(val, grad)`` with fields ``val`` and ``grad``, in either style.

    >>> import warnings, torch, fluxtrain
    >>> warnings.simplefilter("ignore")
    >>> w = torch.tensor([3.0])
    >>> r = fluxtrain.withgradient(lambda: (w * w).sum(), fluxtrain.Params([w]))
    >>> r.val.item(), r.grad[w].tolist()
    (9.0, [6.0])
    """
    if _is_implicit_call(args, "withgradient"):
        _warn_implicit_gradient("withgradient")
        return withgradient_implicit(f, args[0])
    _check_function_first(f, args, "withgradient")
    _check_zero_arg_misuse(f, args, "withgradient")
    return gradients.withgradient_explicit(f, *args)


def pullback(f: Callable[..., Any], *args: Any) -> Any:
    """Zygote's ``pullback``: ``(y, back)``, in either style; ``back(dy)`` may be called often.

    Explicit: ``pullback(f, *args)``, ``back(dy)`` -> a tuple of gradient trees, one per
    argument. Implicit (deprecated): ``pullback(f, ps)`` with ``f`` of no arguments,
    ``back(dy)`` -> :class:`Grads` (the same object each call, as in Zygote: keep one
    with ``.copy()``).

    >>> import warnings, torch, fluxtrain
    >>> warnings.simplefilter("ignore")
    >>> w = torch.tensor([3.0])
    >>> y, back = fluxtrain.pullback(lambda: (w * w).sum(), fluxtrain.Params([w]))
    >>> y.item(), back(1.0)[w].tolist()
    (9.0, [6.0])
    >>> y, back = fluxtrain.pullback(lambda v: (v * v).sum(), w)
    >>> back(1.0)
    (tensor([6.]),)
    """
    if _is_implicit_call(args, "pullback"):
        _warn_implicit_gradient("pullback")
        return pullback_implicit(f, args[0])
    _check_function_first(f, args, "pullback")
    _check_zero_arg_misuse(f, args, "pullback")
    return gradients.pullback_explicit(f, *args)

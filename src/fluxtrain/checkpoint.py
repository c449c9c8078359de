"""Checkpoint and resume: optimiser state as plain data, keyed by parameter path.

Two pairs of functions turn optimiser state into a plain ``dict`` of tensors,
numbers, strings, bools, ``None``, lists, tuples and dicts, which
``torch.save`` writes and ``torch.load(path, weights_only=True)`` reads back,
and turn such a dict back into state for a given model:

* explicit style: :func:`state_dict` (state tree from ``setup``) and
  :func:`load_state_dict` (returns a new state tree for the model);
* implicit style: :func:`optimiser_state_dict` (an old optimiser from
  ``fluxtrain.optimise``, whose state is kept per parameter tensor) and
  :func:`load_optimiser_state_dict` (fills an optimiser, or builds one).

Parameters are identified by their *path* in the model, never by object
identity: ``"0.weight"`` for ``nn.Sequential(...)[0].weight`` (the names
``model.named_parameters()`` gives), ``"enc.w"`` for ``{"enc": {"w": ...}}``,
``"layers.1"`` for a list; a ``Params`` is keyed by position (``"0"``, ``"1"``,
...). A ``DistributedDataParallel`` wrapper is looked through (its ``module.``
prefix is not part of the paths), so checkpoints move freely between DDP and
plain runs.

Rules and hyperparameters are saved as plain data too (the rule's class name
and fields, nested for ``OptimiserChain`` and ``MixedPrecision``), so a learning
rate changed with ``adjust_`` (or ``opt.eta = ...``) survives a restart, and so
do ``freeze_`` flags.

The model's own weights are not part of these dicts: save them beside it
(``model.state_dict()``). A complete checkpoint::

    torch.save({"model": model.state_dict(),
                "opt": fluxtrain.checkpoint.state_dict(opt_state, model)}, "ckpt.pt")
    ...
    ck = torch.load("ckpt.pt", weights_only=True)
    model.load_state_dict(ck["model"])
    opt_state = fluxtrain.checkpoint.load_state_dict(ck["opt"], model)

Loading validates everything (structure, shapes, rule types, state layouts)
before building anything; on error nothing is changed and the message names
the first mismatching path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fluxtrain.core import rules as _rules
from fluxtrain.core import schedules as _sched
from fluxtrain.core import transforms as _transforms
from fluxtrain.core.base import AbstractRule
from fluxtrain.optimisers import tree as T
from fluxtrain.optimisers.leaf import Leaf
from fluxtrain.optimisers.tree import StateTree

__all__ = [
    "state_dict",
    "load_state_dict",
    "optimiser_state_dict",
    "load_optimiser_state_dict",
    "CheckpointError",
    "FORMAT_EXPLICIT",
    "FORMAT_IMPLICIT",
    "VERSION",
]

FORMAT_EXPLICIT = "fluxtrain.state_dict"
FORMAT_IMPLICIT = "fluxtrain.optimiser_state_dict"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint does not fit the model or optimiser it is loaded onto."""


# ============================================================================ paths
def _unwrap(model: Any) -> Any:
    from fluxtrain.distributed import is_ddp

    return model.module if is_ddp(model) else model


def _join(prefix: str, key: Any) -> str:
    return str(key) if not prefix else f"{prefix}.{key}"


def _param_paths(model: Any) -> list[tuple[str, Any, Any]]:
    """``(path, leaf object, kind)`` for every trainable position, ties included, in order."""
    out: list[tuple[str, Any, Any]] = []
    for path, x, k in T.trainable_positions(model):
        name = ""
        for key in T.path_keys(path):
            name = _join(name, key)
        out.append((name, x, k))
    seen: set[str] = set()
    for p, _, _ in out:
        if p in seen:
            raise CheckpointError(
                f"checkpoint: two parameters of the model have the same path {p!r} (a dict key "
                "containing '.' collides with a nested name); rename the key"
            )
        seen.add(p)
    return out


# ============================================================================ plain data
def _enc_hyper(v: Any, where: str) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, AbstractRule):
        return {"__rule__": _enc_rule(v)}
    if isinstance(v, _sched.Schedule):
        return {"__schedule__": _enc_schedule(v, where)}
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).replace("torch.", "")}
    if isinstance(v, tuple):
        return tuple(_enc_hyper(e, where) for e in v)
    if isinstance(v, list):
        return [_enc_hyper(e, where) for e in v]
    raise TypeError(
        f"checkpoint: cannot save the hyperparameter {where} of type {type(v).__name__}; "
        "hyperparameters must be numbers, strings, bools, tuples, dtypes, rules or schedules"
    )


def _enc_schedule(v: Any, where: str) -> dict[str, Any]:
    if isinstance(v, _sched.FunctionSchedule) or not dataclasses.is_dataclass(v):
        raise TypeError(
            f"checkpoint: cannot save the hyperparameter {where}={v!r}: it wraps a Python "
            "function; use a built-in schedule or a dataclass subclass of Schedule"
        )
    fields = {f.name: _enc_hyper(getattr(v, f.name), f"{where}.{f.name}")
              for f in dataclasses.fields(v) if f.init}
    return {"type": type(v).__name__, "module": type(v).__module__, "fields": fields}


def _saved_class(name: Any, extra: Mapping[str, type], modules: tuple[Any, ...],
                 base: type) -> type | None:
    """The class a checkpoint names: the caller's ``rules=`` first, then the built-ins of
    ``modules``; ``None`` unless it is a subclass of ``base``."""
    if not isinstance(name, str):
        return None
    cls = extra.get(name)
    for mod in modules:
        if cls is not None:
            break
        cls = getattr(mod, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


def _dec_schedule(enc: Any, extra: Mapping[str, type]) -> Any:
    name = enc.get("type") if isinstance(enc, Mapping) else None
    cls = _saved_class(name, extra, (_sched,), _sched.Schedule)
    if cls is None:
        raise CheckpointError(
            f"checkpoint: unknown schedule {name!r}; for your own schedules pass them to the "
            f"loader: rules=[{name}]"
        )
    return cls(**{k: _dec_hyper(x, extra) for k, x in enc["fields"].items()})


def _enc_rule(rule: Any) -> dict[str, Any]:
    name = type(rule).__name__
    if isinstance(rule, _rules.OptimiserChain):
        return {"type": name, "module": type(rule).__module__,
                "opts": [_enc_rule(o) for o in rule.opts]}
    if not dataclasses.is_dataclass(rule):
        raise TypeError(
            f"checkpoint: cannot save the rule {rule!r}: rules must be dataclasses whose "
            "fields are the hyperparameters (see fluxtrain.optimisers.AbstractRule)"
        )
    fields = {
        f.name: _enc_hyper(getattr(rule, f.name), f"{name}.{f.name}")
        for f in dataclasses.fields(rule)
        if f.init
    }
    return {"type": name, "module": type(rule).__module__, "fields": fields}


def _rule_class(enc: Mapping[str, Any], extra: Mapping[str, type]) -> type:
    name = enc.get("type")
    # built-in rules live in two core modules: the per-leaf rules and the
    # whole-tree transforms (ClipGlobalNorm, SkipNonFinite)
    cls = _saved_class(name, extra, (_rules, _transforms), AbstractRule)
    if cls is None:
        raise CheckpointError(
            f"checkpoint: unknown rule {name!r} (saved from module {enc.get('module')!r}); "
            f"for your own rules pass them to the loader: rules=[{name}]"
        )
    return cls


def _dec_hyper(v: Any, extra: Mapping[str, type]) -> Any:
    if isinstance(v, dict):
        if "__rule__" in v:
            return _dec_rule(v["__rule__"], extra)
        if "__schedule__" in v:
            return _dec_schedule(v["__schedule__"], extra)
        if "__dtype__" in v:
            dt = getattr(torch, str(v["__dtype__"]), None)
            if not isinstance(dt, torch.dtype):
                raise CheckpointError(f"checkpoint: unknown dtype {v['__dtype__']!r}")
            return dt
        raise CheckpointError(f"checkpoint: malformed hyperparameter {v!r}")
    if isinstance(v, tuple):
        return tuple(_dec_hyper(e, extra) for e in v)
    if isinstance(v, list):
        return [_dec_hyper(e, extra) for e in v]
    return v


def _dec_rule(enc: Any, extra: Mapping[str, type]) -> AbstractRule:
    if not isinstance(enc, Mapping) or "type" not in enc:
        raise CheckpointError(f"checkpoint: malformed rule entry {enc!r}")
    cls: Any = _rule_class(enc, extra)
    try:
        if issubclass(cls, _rules.OptimiserChain):
            return cls(*(_dec_rule(o, extra) for o in enc["opts"]))
        fields = {k: _dec_hyper(v, extra) for k, v in enc["fields"].items()}
        if issubclass(cls, _rules.MixedPrecision):
            return cls(fields["dtype"], fields["rule"])
        try:
            return cls(**fields)  # type: ignore[no-any-return]
        except TypeError:  # a rule whose constructor does not take its fields by name
            obj = cls.__new__(cls)
            for k, v in fields.items():
                object.__setattr__(obj, k, v)
            obj.__post_init__()
            return obj  # type: ignore[no-any-return]
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"checkpoint: cannot rebuild the rule {enc.get('type')!r} from {dict(enc)!r}: {e}"
        ) from e


def _enc_state(s: Any, where: str) -> Any:
    if s is None or isinstance(s, bool | int | float | str):
        return s
    if isinstance(s, torch.Tensor):
        return s.detach().clone()
    if isinstance(s, tuple) and hasattr(s, "_fields"):
        return {"__namedtuple__": type(s).__name__,
                "fields": {f: _enc_state(getattr(s, f), where) for f in s._fields}}
    if isinstance(s, tuple):
        return tuple(_enc_state(v, where) for v in s)
    if isinstance(s, list):
        return [_enc_state(v, where) for v in s]
    if isinstance(s, dict):
        return {"__dict__": {k: _enc_state(v, where) for k, v in s.items()}}
    if isinstance(s, torch.dtype):
        return {"__dtype__": str(s).replace("torch.", "")}
    raise TypeError(
        f"checkpoint: cannot save the optimiser state at {where!r}: it holds a "
        f"{type(s).__name__}; states may hold tensors, numbers, bools, strings, None and "
        "(named) tuples, lists and dicts of those"
    )


def _describe(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    if isinstance(v, dict) and "__namedtuple__" in v:
        return f"a {v['__namedtuple__']}"
    return f"a {type(v).__name__}" if v is not None else "None"


def _dec_state(enc: Any, tmpl: Any, where: str, what: str) -> Any:
    """Rebuild a saved state on the layout of ``tmpl`` (``rule.init(param)``): checks only."""

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"checkpoint: {what} at {where!r}: {msg}")

    if tmpl is None:
        if enc is not None:
            raise bad(f"the rule expects no state here but the checkpoint has {_describe(enc)}")
        return None
    if isinstance(tmpl, torch.Tensor):
        if not isinstance(enc, torch.Tensor):
            raise bad(f"expected a tensor of shape {tuple(tmpl.shape)}, got {_describe(enc)}")
        if enc.shape != tmpl.shape:
            raise bad(
                f"shape mismatch: the checkpoint has {tuple(enc.shape)}, the model's parameter "
                f"needs {tuple(tmpl.shape)}"
            )
        return enc.to(device=tmpl.device, dtype=tmpl.dtype).clone()
    if isinstance(tmpl, bool):
        if not isinstance(enc, bool):
            raise bad(f"expected a bool, got {_describe(enc)}")
        return enc
    if isinstance(tmpl, int | float | complex):
        if isinstance(enc, bool) or not isinstance(enc, int | float | complex):
            raise bad(f"expected a number, got {_describe(enc)}")
        return enc
    if isinstance(tmpl, str):
        if not isinstance(enc, str):
            raise bad(f"expected a string, got {_describe(enc)}")
        return enc
    if isinstance(tmpl, torch.dtype):
        return _dec_hyper(enc, {})
    if isinstance(tmpl, tuple) and hasattr(tmpl, "_fields"):
        tname = type(tmpl).__name__
        if not (isinstance(enc, dict) and enc.get("__namedtuple__") == tname):
            raise bad(f"the rule's state is a {tname}, the checkpoint has {_describe(enc)} "
                      "(was it saved with a different rule?)")
        fields = enc["fields"]
        if list(fields) != list(tmpl._fields):
            raise bad(f"{tname} fields {list(tmpl._fields)} expected, got {list(fields)}")
        return type(tmpl)(*(
            _dec_state(fields[f], getattr(tmpl, f), f"{where}", what) for f in tmpl._fields
        ))
    if isinstance(tmpl, tuple | list):
        if not isinstance(enc, tuple | list) or len(enc) != len(tmpl):
            n = f" of length {len(enc)}" if isinstance(enc, tuple | list) else ""
            raise bad(f"expected a sequence of length {len(tmpl)}, got {_describe(enc)}{n} "
                      "(was it saved with a different rule?)")
        vals = [_dec_state(e, t, where, what) for e, t in zip(enc, tmpl)]
        return type(tmpl)(vals) if isinstance(tmpl, list) else tuple(vals)
    if isinstance(tmpl, dict):
        if not (isinstance(enc, dict) and "__dict__" in enc and
                set(enc["__dict__"]) == set(tmpl)):
            raise bad(f"expected a dict with keys {sorted(tmpl)}, got {_describe(enc)}")
        return {k: _dec_state(enc["__dict__"][k], v, where, what) for k, v in tmpl.items()}
    # a state type we cannot check against: accept what was saved
    return enc


def _check_format(d: Any, fmt: str, fname: str) -> None:
    if not isinstance(d, Mapping) or "format" not in d:
        hint = ""
        if isinstance(d, Mapping) and d and all(isinstance(v, torch.Tensor) for v in d.values()):
            hint = " (this looks like a model's state_dict: load it with model.load_state_dict)"
        raise CheckpointError(
            f"{fname}: this is not a fluxtrain checkpoint dict (no 'format' entry){hint}"
        )
    if d["format"] != fmt:
        other = {
            FORMAT_EXPLICIT: "fluxtrain.checkpoint.load_state_dict (an explicit state tree)",
            FORMAT_IMPLICIT: "fluxtrain.checkpoint.load_optimiser_state_dict (an old optimiser)",
        }.get(d["format"], f"an unknown format {d['format']!r}")
        raise CheckpointError(
            f"{fname}: this checkpoint is of the format {d['format']!r}; load it with {other}"
        )
    if d.get("version") != VERSION:
        raise CheckpointError(
            f"{fname}: checkpoint version {d.get('version')!r} is not supported (this "
            f"fluxtrain reads version {VERSION})"
        )


def _structure_error(fname: str, saved: list[str], model: list[str]) -> CheckpointError:
    for i, (a, b) in enumerate(zip(saved, model)):
        if a != b:
            return CheckpointError(
                f"{fname}: the model does not match the checkpoint at parameter {i}: the "
                f"checkpoint has {a!r} where the model has {b!r} (first mismatching path)"
            )
    if len(saved) > len(model):
        return CheckpointError(
            f"{fname}: the checkpoint has the parameter {saved[len(model)]!r} that the model "
            f"lacks (checkpoint: {len(saved)} parameters, model: {len(model)})"
        )
    return CheckpointError(
        f"{fname}: the model has the parameter {model[len(saved)]!r} that the checkpoint "
        f"lacks (checkpoint: {len(saved)} parameters, model: {len(model)})"
    )


def _extra_rules(rules: Iterable[type] | Mapping[str, type] | None) -> dict[str, type]:
    if rules is None:
        return {}
    if isinstance(rules, Mapping):
        return dict(rules)
    return {c.__name__: c for c in rules}


# ============================================================================ explicit
def _leaves_with_paths(opt_state: Any, model: Any, fname: str) -> list[tuple[str, Any, Any]]:
    """``(path, Leaf or (), tensor)`` per trainable position, checking the trees agree."""
    out: list[tuple[str, Any, Any]] = []

    def mismatch(path: str, msg: str) -> CheckpointError:
        return CheckpointError(
            f"{fname}: the state tree does not match the model at {path or '<root>'!r}: {msg}. "
            "Was it made by setup(rule, model) for this model?"
        )

    def sub(st: Any, key: Any, path: str) -> Any:
        if isinstance(st, StateTree):
            if str(key) not in st._children:
                raise mismatch(path, f"the state has no child {key!r}")
            return st._children[str(key)]
        if isinstance(st, Mapping):
            if key not in st:
                raise mismatch(path, f"the state has no key {key!r}")
            return st[key]
        if isinstance(st, tuple | list):
            if not isinstance(key, int) or key >= len(st):
                raise mismatch(path, "the state has fewer elements than the model")
            return st[key]
        raise mismatch(path, f"the state is a {type(st).__name__} where the model has a container")

    def walk(st: Any, x: Any, path: str, enabled: bool) -> None:
        k = T.kind(x)
        if k == T.TENSOR or k == T.NUMPY:
            if enabled and T.is_trainable(x, k):
                if type(st) is not Leaf:
                    raise mismatch(path, f"expected a Leaf, got {type(st).__name__}")
                out.append((path, st, x))
            return
        if k == T.OTHER or not enabled:
            return
        for i, (key, child, en) in enumerate(T.children(x, k)):
            kk = i if k in (T.LIST, T.TUPLE, T.NAMEDTUPLE) else key
            walk(sub(st, kk, _join(path, key)), child, _join(path, key), en)

    walk(opt_state, model, "", True)
    return out


def state_dict(opt_state: Any, model: Any) -> dict[str, Any]:
    """The explicit optimiser state tree as plain data, keyed by parameter path.

    ``opt_state`` is the tree from ``setup(rule, model)`` (possibly updated,
    adjusted, frozen); ``model`` the model it belongs to (used only for the
    paths). The result holds copies of the state tensors (a snapshot: training
    on does not change it) and can be saved with ``torch.save`` and read with
    ``torch.load(..., weights_only=True)``::

        {"format": "fluxtrain.state_dict", "version": 1,
         "paths":  ["0.weight", "0.bias", ...],   # every trainable place, model order
         "rules":  [{"type": "Adam", "module": "fluxtrain.core.rules",
                     "fields": {"eta": 0.001, "beta": (0.9, 0.999), "epsilon": 1e-08}}],
         "leaves": {"0.weight": {"rule": 0, "frozen": False,
                                 "state": {"__namedtuple__": "AdamState",
                                           "fields": {"m": tensor, "v": tensor,
                                                      "beta_t": (0.9, 0.999)}}},
                    ...},
         "tied":   {"2.weight": "0.weight"}}    # later places of a shared Leaf

    >>> import torch
    >>> from fluxtrain.optimisers import Descent, setup, adjust_
    >>> model = torch.nn.Linear(2, 1)
    >>> st = setup(Descent(0.1), model)
    >>> adjust_(st, 0.05)
    >>> d = state_dict(st, model)
    >>> list(d["leaves"]), d["rules"][0]["fields"]
    (['weight', 'bias'], {'eta': 0.05})
    """
    model = _unwrap_pair_model(model)
    opt_state = _unwrap_pair_state(opt_state, model)
    fname = "state_dict"
    _param_paths(model)  # path collisions
    rules: list[dict[str, Any]] = []
    rule_index: dict[int, int] = {}
    leaves: dict[str, Any] = {}
    tied: dict[str, str] = {}
    leaf_first: dict[int, str] = {}
    keep: list[Any] = []
    paths: list[str] = []
    for path, leaf, _x in _leaves_with_paths(opt_state, model, fname):
        paths.append(path)
        if id(leaf) in leaf_first:
            tied[path] = leaf_first[id(leaf)]
            continue
        leaf_first[id(leaf)] = path
        keep.append(leaf)
        if id(leaf.rule) not in rule_index:
            rule_index[id(leaf.rule)] = len(rules)
            rules.append(_enc_rule(leaf.rule))
            keep.append(leaf.rule)
        leaves[path] = {
            "rule": rule_index[id(leaf.rule)],
            "state": _enc_state(leaf.state, path),
            "frozen": bool(leaf.frozen),
        }
    return {"format": FORMAT_EXPLICIT, "version": VERSION, "paths": paths, "rules": rules,
            "leaves": leaves, "tied": tied}


def _unwrap_pair_model(model: Any) -> Any:
    return _unwrap(model)


def _unwrap_pair_state(opt_state: Any, inner_model: Any) -> Any:
    # setup(rule, ddp) gives StateTree(module=...): look through it as through the model
    if (isinstance(opt_state, StateTree) and list(opt_state._children) == ["module"]
            and not (T.kind(inner_model) == T.MODULE and "module" in inner_model._modules)):
        return opt_state._children["module"]
    return opt_state


def _rule_kind(rule: Any) -> Any:
    if isinstance(rule, _rules.OptimiserChain):
        return ("OptimiserChain", tuple(_rule_kind(o) for o in rule.opts))
    if isinstance(rule, _rules.MixedPrecision):
        return ("MixedPrecision", _rule_kind(rule.rule))
    return type(rule).__name__


def load_state_dict(
    d: Mapping[str, Any],
    model: Any,
    *,
    rule: AbstractRule | None = None,
    rules: Iterable[type] | Mapping[str, type] | None = None,
) -> Any:
    """A new state tree for ``model`` from the plain data of :func:`state_dict`.

    The rules (with their saved hyperparameters), states, frozen flags and ties
    are restored; state tensors are moved to each parameter's device and dtype.
    Pass ``rule=`` to insist that the checkpoint was made with that kind of
    rule (its class structure; the saved hyperparameters still win), and
    ``rules=[MyRule]`` to rebuild rules of your own.

    Raises :class:`CheckpointError` (a ``ValueError``), changing nothing, when
    the model's parameter paths differ from the checkpoint's (naming the first
    mismatching path), a state tensor has the wrong shape (naming path and
    shapes), the saved state does not fit its rule, or the rule differs from
    ``rule=``. A ``DistributedDataParallel`` model gets the tree
    ``setup(rule, ddp)`` would give (one child ``module``).

    >>> import torch
    >>> from fluxtrain.optimisers import Momentum, setup
    >>> model = torch.nn.Linear(2, 1)
    >>> d = state_dict(setup(Momentum(0.1), model), model)
    >>> st = load_state_dict(d, torch.nn.Linear(2, 1))
    >>> st.weight
    Leaf(Momentum(eta=0.1, rho=0.9), Float32[0.0 0.0])
    >>> try:
    ...     load_state_dict(d, torch.nn.Linear(3, 1))
    ... except CheckpointError as e:
    ...     print(e)
    checkpoint: Momentum state at 'weight': shape mismatch: the checkpoint has (1, 2), \
the model's parameter needs (1, 3)
    """
    fname = "load_state_dict"
    _check_format(d, FORMAT_EXPLICIT, fname)
    try:
        return _load_state_dict(d, model, rule, rules, fname)
    except (KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{fname}: malformed checkpoint (missing or bad entry {e})") from e


def _load_state_dict(d: Mapping[str, Any], model: Any, rule: AbstractRule | None,
                     rules: Iterable[type] | Mapping[str, type] | None, fname: str) -> Any:
    outer = model
    model = _unwrap(model)
    extra = _extra_rules(rules)
    # 1. structure: the model's trainable positions against the checkpoint's
    positions = _param_paths(model)
    model_paths = [p for p, _, _ in positions]
    saved_paths = list(d["paths"])
    if saved_paths != model_paths:
        raise _structure_error(fname, saved_paths, model_paths)
    tied_saved = dict(d["tied"])
    first_of: dict[int, str] = {}
    model_tied: dict[str, str] = {}
    for p, x, _k in positions:
        if id(x) in first_of:
            model_tied[p] = first_of[id(x)]
        else:
            first_of[id(x)] = p
    if model_tied != tied_saved:
        p = next(iter(sorted(set(model_tied.items()) ^ set(tied_saved.items()))))[0]
        in_model = f"the same tensor as {model_tied[p]!r}" if p in model_tied else "its own tensor"
        in_ckpt = (f"shares the state of {tied_saved[p]!r}" if p in tied_saved
                   else "has its own state")
        raise CheckpointError(
            f"{fname}: tied parameters differ at {p!r}: in the model it is {in_model}, "
            f"in the checkpoint it {in_ckpt}"
        )
    # 2. rules
    rule_objs = [_dec_rule(r, extra) for r in d["rules"]]
    if rule is not None:
        want = _rule_kind(rule)
        for path, ent in d["leaves"].items():
            got = rule_objs[ent["rule"]]
            if _rule_kind(got) != want:
                raise CheckpointError(
                    f"{fname}: the checkpoint was saved with the rule {got!r} (at {path!r}), "
                    f"not a {type(rule).__name__} like {rule!r}; it belongs to a different "
                    "optimiser set-up"
                )
    # 3. states, checked against each rule's layout for the new parameter
    by_path = {p: (x, k) for p, x, k in positions}
    leaves: dict[str, Leaf] = {}
    for path, ent in d["leaves"].items():
        r = rule_objs[ent["rule"]]
        x, k = by_path[path]
        t = T.as_tensor(x, k)
        with torch.no_grad():
            tmpl = r.init(t)
        state = _dec_state(ent["state"], tmpl, path, f"{type(r).__name__} state")
        frozen = ent.get("frozen", False)
        if not isinstance(frozen, bool):
            raise CheckpointError(f"{fname}: malformed frozen flag at {path!r}: {frozen!r}")
        leaves[path] = Leaf(r, state, frozen)
    for p, q in tied_saved.items():
        leaves[p] = leaves[q]
    # 4. the tree, mirroring the model as setup does
    tree = _build_tree(model, "", True, leaves)
    if outer is not model:
        return StateTree({"module": tree})
    return tree


def _build_tree(x: Any, path: str, enabled: bool, leaves: Mapping[str, Leaf]) -> Any:
    k = T.kind(x)
    if k == T.TENSOR or k == T.NUMPY:
        if enabled and T.is_trainable(x, k):
            return leaves[path]
        return ()
    if k == T.OTHER or not enabled:
        return ()
    subs = [(key, _build_tree(c, _join(path, key), en, leaves)) for key, c, en in
            T.children(x, k)]
    return T.mirror(x, k, subs)
    return tuple(v for _, v in subs)


# ============================================================================ implicit
def _old_classes() -> Any:
    from fluxtrain.optimise import optimisers as M

    return M


def _param_list(model_or_params: Any) -> list[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` per parameter: Params by position, a model by path (ties once)."""
    from fluxtrain.implicit.params import Params

    if isinstance(model_or_params, Params):
        return [(str(i), p) for i, p in enumerate(model_or_params)]
    model = _unwrap(model_or_params)
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for path, x, k in _param_paths(model):
        if id(x) in seen:
            continue
        seen.add(id(x))
        if k == T.NUMPY:
            raise TypeError(
                f"optimiser_state_dict: the model holds a numpy array at {path!r}; old "
                "optimisers key their state by the tensors of params(...): pass that Params"
            )
        out.append((path, x))
    return out


def _enc_opt(opt: Any, plist: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    M = _old_classes()
    name = type(opt).__name__
    if isinstance(opt, M.Optimiser):
        return {"type": name, "members": [_enc_opt(o, plist) for o in opt.os]}
    if not isinstance(opt, M.AbstractOptimiser):
        raise TypeError(
            f"optimiser_state_dict needs an old optimiser from fluxtrain.optimise, got "
            f"{type(opt).__name__}; for a state tree from setup use "
            "fluxtrain.checkpoint.state_dict(opt_state, model)"
        )
    hyper = {n: _enc_hyper(getattr(opt, n), f"{name}.{n}") for n in opt._hyper}
    states = {path: _enc_state(opt._states[p], path) for path, p in plist if p in opt._states}
    out = {"type": name, "hyper": hyper, "state": states}
    if "_published" in opt.__dict__:
        out["published"] = opt.__dict__["_published"]
    return out


def optimiser_state_dict(opt: Any, model_or_params: Any) -> dict[str, Any]:
    """An old optimiser's hyperparameters and per-parameter state as plain data.

    ``model_or_params`` names the parameters: a model (paths such as
    ``"0.weight"``, as ``named_parameters()``) or a ``Params`` (positions
    ``"0"``, ``"1"``, ... in its order). Prefer the model when you have it:
    paths survive a reordering of ``params(...)``. State kept for tensors
    that are not among these parameters is not saved. Format::

        {"format": "fluxtrain.optimiser_state_dict", "version": 1,
         "params": ["0.weight", "0.bias", ...],
         "optimiser": {"type": "Adam", "hyper": {"eta": 0.001, ...},
                       "state": {"0.weight": {...}, ...}}}
        # an Optimiser (chain): {"type": "Optimiser", "members": [{...}, {...}]}

    >>> import torch, warnings
    >>> from fluxtrain.optimise import Momentum
    >>> lin = torch.nn.Linear(2, 1)
    >>> d = optimiser_state_dict(Momentum(0.1), lin)
    >>> d["params"], d["optimiser"]["hyper"]
    (['weight', 'bias'], {'eta': 0.1, 'rho': 0.9})
    """
    plist = _param_list(model_or_params)
    return {"format": FORMAT_IMPLICIT, "version": VERSION, "params": [p for p, _ in plist],
            "optimiser": _enc_opt(opt, plist)}


def _opt_kind(o: Any) -> Any:
    M = _old_classes()
    if isinstance(o, M.Optimiser):
        return ("Optimiser", tuple(_opt_kind(m) for m in o.os))
    return type(o).__name__


def _enc_opt_kind(enc: Mapping[str, Any]) -> Any:
    if enc.get("type") == "Optimiser":
        return ("Optimiser", tuple(_enc_opt_kind(m) for m in enc["members"]))
    return enc.get("type")


def _dec_opt(
    enc: Any, plist: list[tuple[str, torch.Tensor]], fname: str
) -> tuple[Any, list[tuple[Any, dict[torch.Tensor, Any], Any]]]:
    """A fresh optimiser from ``enc`` plus, per leaf optimiser, its decoded states."""
    M = _old_classes()
    if not isinstance(enc, Mapping) or "type" not in enc:
        raise CheckpointError(f"{fname}: malformed optimiser entry {enc!r}")
    name = enc["type"]
    if name == "Optimiser":
        members = []
        parts: list[tuple[Any, dict[torch.Tensor, Any], Any]] = []
        for m in enc["members"]:
            o, p = _dec_opt(m, plist, fname)
            members.append(o)
            parts.extend(p)
        return M.Optimiser(*members), parts
    cls = getattr(M, name, None)
    if not (isinstance(cls, type) and issubclass(cls, M.AbstractOptimiser)):
        raise CheckpointError(f"{fname}: unknown old optimiser {name!r}")
    hyper = {k: _dec_hyper(v, {}) for k, v in enc["hyper"].items()}
    try:
        opt = cls(**hyper)
    except Exception as e:
        raise CheckpointError(f"{fname}: cannot rebuild {name}({hyper}): {e}") from e
    rule = opt._rule()
    by_path = dict(plist)
    states: dict[torch.Tensor, Any] = {}
    for path, s in enc["state"].items():
        if path not in by_path:
            raise CheckpointError(f"{fname}: the checkpoint has state for {path!r}, which the "
                                  "model/Params lacks")
        x = by_path[path]
        with torch.no_grad():
            tmpl = rule.init(x)
        states[x] = _dec_state(s, tmpl, path, f"{name} state")
    return opt, [(opt, states, enc.get("published"))]


def load_optimiser_state_dict(
    opt: Any, d: Mapping[str, Any], model_or_params: Any
) -> Any:
    """Restore an old optimiser's hyperparameters and state onto ``model_or_params``.

    ``opt`` is the optimiser to fill (it must be of the same kind as the saved
    one: same class, same members for an ``Optimiser``; its hyperparameters are
    replaced by the saved ones and its state by the saved state) or ``None``
    to build a new one. ``model_or_params`` is the model or ``Params`` to key
    the state by (the same kind as when saving: paths or positions). Returns
    the optimiser. Everything is validated first: on a
    :class:`CheckpointError` neither ``opt`` nor the model is changed.

    >>> import torch
    >>> from fluxtrain.optimise import Momentum
    >>> lin = torch.nn.Linear(2, 1)
    >>> d = optimiser_state_dict(Momentum(0.1), lin)
    >>> load_optimiser_state_dict(None, d, torch.nn.Linear(2, 1))
    Momentum(eta=0.1, rho=0.9)
    """
    fname = "load_optimiser_state_dict"
    _check_format(d, FORMAT_IMPLICIT, fname)
    try:
        return _load_optimiser_state_dict(opt, d, model_or_params, fname)
    except (KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{fname}: malformed checkpoint (missing or bad entry {e})") from e


def _load_optimiser_state_dict(opt: Any, d: Mapping[str, Any], model_or_params: Any,
                               fname: str) -> Any:
    plist = _param_list(model_or_params)
    saved = list(d["params"])
    names = [p for p, _ in plist]
    if saved != names:
        raise _structure_error(fname, saved, names)
    if opt is not None:
        M = _old_classes()
        if not isinstance(opt, M.AbstractOptimiser):
            raise TypeError(
                f"{fname}: the first argument must be an old optimiser (or None), got "
                f"{type(opt).__name__}"
            )
        want, got = _opt_kind(opt), _enc_opt_kind(d["optimiser"])
        if want != got:
            raise CheckpointError(
                f"{fname}: the checkpoint holds the state of a {_kind_str(got)}, but the "
                f"optimiser given is a {_kind_str(want)} ({opt!r}); pass the same kind of "
                "optimiser, or None to rebuild the saved one"
            )
    fresh, parts = _dec_opt(d["optimiser"], plist, fname)
    # shapes match the current model, and every state fits its rule: now apply
    for o, _states, published in parts:
        for x, s in _states.items():
            o._states[x] = s
        if published is not None:
            object.__setattr__(o, "_published", published)
    if opt is None:
        return fresh
    _transfer(fresh, opt)
    return opt


def _kind_str(k: Any) -> str:
    if isinstance(k, tuple):
        return f"Optimiser({', '.join(_kind_str(m) for m in k[1])})"
    return str(k)


def _transfer(src: Any, dst: Any) -> None:
    M = _old_classes()
    if isinstance(src, M.Optimiser):
        for a, b in zip(src.os, dst.os):
            _transfer(a, b)
        return
    for n in src._hyper:
        if "_published" in dst.__dict__:  # ExpDecay: a plain set, not a user reset of eta
            object.__setattr__(dst, n, getattr(src, n))
        else:
            setattr(dst, n, getattr(src, n))
    object.__setattr__(dst, "_cache", None)
    object.__setattr__(dst, "_states", src._states)
    if "_published" in src.__dict__:
        object.__setattr__(dst, "_published", src.__dict__["_published"])

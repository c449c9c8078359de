"""Report records: every change and every marker, with position and rule id."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MARKER_PREFIX = "# TODO(fluxtrain-migrate "

#: Marker codes -> what the user must do (docs/migrate.md lists the same).
MARKERS: dict[str, str] = {
    "FM101": "implicit Params used here; use the model itself, or trainables(model) "
    "for a list of its parameters",
    "FM102": "params(...) that cannot become an explicit model (several pieces written "
    "inline, a * argument, or bound more than once): bind ps = (a, b) once and use it as "
    "the model",
    "FM103": "cannot tell which model these params hold (reassigned, or not a direct "
    "params(model) binding); rewrite this step by hand",
    "FM104": "the loss of this train_ is not a function of this file; give it the model "
    "as first parameter",
    "FM105": "implicit gradient not convertible: write gradient(lambda m: ..., model)[0]",
    "FM106": "lookup into implicit Grads not resolvable to a path in the gradient tree; "
    "use the field path (grads.layer.weight)",
    "FM107": "old optimiser used in a way that cannot be translated; use "
    "opt_state = setup(rule, model) and adjust_(opt_state, ...)",
    "FM108": "implicit update_ not convertible: use update_(opt_state, model, grads)",
    "FM109": "stop()/skip() outside a convertible callback: use break/continue in an "
    "explicit loop",
    "FM110": "implicit-era object built by hand (Params, Grads, AbstractOptimiser "
    "subclass); port to the explicit API by hand",
    "FM111": "implicit train_ not convertible: write a loop with withgradient and update_",
}


@dataclass(frozen=True)
class Change:
    """One rewrite: where (1-based line, 0-based column, in the input) and what."""

    path: str
    line: int
    col: int
    rule: str
    message: str


@dataclass(frozen=True)
class Marker:
    """One marker left in the code (position in the output, where the comment is)."""

    path: str
    line: int
    col: int
    code: str
    message: str


@dataclass
class FileResult:
    """Outcome of migrating one file."""

    path: str
    changed: bool = False
    changes: list[Change] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    error: str | None = None
    new_bytes: bytes | None = None
    old_bytes: bytes | None = None

    def to_json(self) -> dict[str, object]:
        """Plain data for ``--format json`` (without the file contents)."""
        return {
            "path": self.path,
            "changed": self.changed,
            "error": self.error,
            "changes": [asdict(c) for c in self.changes],
            "markers": [asdict(m) for m in self.markers],
        }


def marker_text(code: str, detail: str | None = None) -> str:
    """The marker comment for ``code`` (``# TODO(fluxtrain-migrate FMxxx): ...``)."""
    text = detail or MARKERS[code]
    return f"{MARKER_PREFIX}{code}): {text}"

"""Side-by-side speed measurements: fluxtrain against torch.optim, in one run.

Run ``.venv/bin/python benchmarks/bench.py`` (``--quick`` for a smoke run). It
prints a table of medians (ms per step) with ratios and writes it to
``benchmarks/RESULTS.md``.

Method (after ../shared/reference/speed-anchors.md): only the timed operation
is inside the timer; gradients are pre-filled and state is allocated in
untimed warm-up steps; all rows of a case are sampled round-robin over several
rounds so that a slow spell of the shared host lands on every row alike; the
statistic is the median. The bandwidth bound is the bytes a step must move
(28 B/element for Adam, 20 for SGD-momentum) divided by the in-place triad
bandwidth ``a.add_(b, alpha=...)``, probed as one more row of each case (so
the same slow spells land on it as on the rows it bounds).
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import fluxtrain
from fluxtrain import optimisers as O
from fluxtrain.core import native, tensormeta

Row = tuple[str, Callable[[], object]]


# ---------------------------------------------------------------- timing
class Timings:
    """Samples of every row, round by round: medians, and ratios paired within rounds."""

    def __init__(self, rounds: list[dict[str, list[float]]]) -> None:
        self.rounds = rounds

    def median(self, name: str) -> float:
        """Median ms per call over all samples of ``name``."""
        return statistics.median(x for r in self.rounds for x in r[name])

    def per_round(self, name: str) -> list[float]:
        return [statistics.median(r[name]) for r in self.rounds]

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of (a's median / b's median) in that round: a slow spell of
        the shared host lands on both sides of each ratio (rows alternate within rounds)."""
        return statistics.median(x / y for x, y in zip(self.per_round(a), self.per_round(b)))

    def names(self) -> list[str]:
        return list(self.rounds[0]) if self.rounds else []


def measure(rows: list[Row], rounds: int, min_time: float) -> Timings:
    """Samples of ms per call of every row, taken round-robin across rounds."""
    samples: list[dict[str, list[float]]] = []
    gc.collect()
    gc.freeze()
    try:
        for r in range(rounds):
            order = rows if r % 2 == 0 else list(reversed(rows))
            got: dict[str, list[float]] = {name: [] for name, _ in rows}
            for name, fn in order:
                fn()  # untimed warm-up call
                t_end = time.perf_counter() + min_time
                n = 0
                while n < 2 or time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    fn()
                    got[name].append((time.perf_counter() - t0) * 1e3)
                    n += 1
            samples.append(got)
    finally:
        gc.unfreeze()
    return Timings(samples)


#: the bandwidth probe's row name (sampled round-robin with the case's rows)
TRIAD = "bandwidth probe (in-place triad, 16.8M)"


def triad_row(device: str = "cpu") -> tuple[Row, int]:
    """The in-place triad ``a.add_(b, alpha=...)`` as a row, and the bytes it moves."""
    n = 1 << 24
    a, b = torch.rand(n, device=device), torch.rand(n, device=device)
    return (TRIAD, synced(lambda: a.add_(b, alpha=1e-9), device)), 12 * n


def bound_ms(numel_per_step: int, bytes_per_elem: int, triad_ms: float,
             triad_bytes: int) -> float:
    """ms a step must take at the triad's bandwidth (bytes moved / bytes per ms)."""
    return numel_per_step * bytes_per_elem / (triad_bytes / triad_ms)


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a device synchronisation (CUDA work is asynchronous)."""
    if device == "cpu":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


# ---------------------------------------------------------------- cases
def gradient_like(t: torch.Tensor) -> torch.Tensor:
    """A pre-filled gradient for ``t``, scaled in place: made one after another, the
    gradients then lie next to each other, as autograd's backward allocates them. (With
    ``randn_like(t) * 1e-3`` each one lay beside a freed temporary of its own size: holes
    in the gradient stream that cost every optimiser's step 10-16% on 2,000 x 4,096,
    ``benchmarks/layout.py``.)"""
    return torch.randn_like(t).mul_(1e-3)


def case_one_big(scale: float) -> list[torch.Tensor]:
    return [torch.randn(int((1 << 24) * scale))]


def case_many_small(scale: float) -> list[torch.Tensor]:
    return [torch.randn(4096) for _ in range(max(1, int(2000 * scale)))]


def case_mix(scale: float) -> list[torch.Tensor]:
    layers: list[nn.Module] = []
    widths = [32, 64, 128, 192]
    c_in = 3
    for i in range(max(4, int(64 * scale))):
        c_out = widths[min(i * len(widths) // max(4, int(64 * scale)), len(widths) - 1)]
        layers += [nn.Conv2d(c_in, c_out, 3, bias=False), nn.BatchNorm2d(c_out)]
        c_in = c_out
    layers += [nn.Linear(192, 1536), nn.Linear(1536, 1024), nn.Linear(1024, 10)]
    return [p.detach().clone() for p in nn.Sequential(*layers).parameters()]


def case_small_model(scale: float) -> list[torch.Tensor]:
    # 20 tensors, about 50k parameters: per-call overhead dominates.
    sizes = [(64, 64), (64,)] * 10
    return [torch.randn(s) for s in sizes]


CASES = {
    "1 x 16.8M": case_one_big,
    "2000 x 4096": case_many_small,
    "MLP/conv mix": case_mix,
    "small model (20 tensors)": case_small_model,
}


# ---------------------------------------------------------------- rows
def optimiser_rows(tensors: list[torch.Tensor]) -> list[Row]:
    """torch.optim (foreach, fused) and fluxtrain explicit/implicit update_ rows."""
    rows: list[Row] = []

    def torch_row(
        make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    ) -> Callable[[], object]:
        ps = [t.clone().requires_grad_(True) for t in tensors]
        for p in ps:
            p.grad = gradient_like(p)
        opt = make(ps)
        return opt.step

    def explicit_row(rule: O.AbstractRule, flat: bool = False) -> Callable[[], object]:
        model = [t.clone() for t in tensors]
        grads = [gradient_like(t) for t in tensors]
        if flat:  # fluxtrain.flatten_: the gradients live in the layout's buffer
            layout = fluxtrain.flatten_(model)
            for view, g in zip(layout.views, grads):
                view.copy_(g)
            grads = layout.grads
        state = O.setup(rule, model)
        return lambda: O.update_(state, model, grads)

    def implicit_row(opt: object, flat: bool = False) -> Callable[[], object]:
        model = [t.clone() for t in tensors]
        ps = fluxtrain.Params(model)
        if flat:
            layout = fluxtrain.flatten_(model)
            for view in layout.views:
                view.copy_(torch.randn_like(view) * 1e-3)
            gs = fluxtrain.Grads([(p, p.grad) for p in model], ps)
        else:
            gs = fluxtrain.Grads([(p, gradient_like(p)) for p in model], ps)
        return lambda: fluxtrain.update_(opt, ps, gs)

    rows.append(("torch Adam foreach", torch_row(lambda ps: torch.optim.Adam(ps, foreach=True))))
    rows.append(("torch Adam fused", torch_row(lambda ps: torch.optim.Adam(ps, fused=True))))
    rows.append(("fluxtrain Adam explicit", explicit_row(O.Adam())))
    rows.append(("fluxtrain Adam implicit", implicit_row(fluxtrain.optimise.Adam())))
    rows.append(("fluxtrain Adam explicit, flat", explicit_row(O.Adam(), flat=True)))
    rows.append(("fluxtrain Adam implicit, flat",
                 implicit_row(fluxtrain.optimise.Adam(), flat=True)))
    rows.append(
        (
            "torch SGD-m foreach",
            torch_row(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, foreach=True)),
        )
    )
    rows.append(
        (
            "torch SGD-m fused",
            torch_row(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, fused=True)),
        )
    )
    rows.append(("fluxtrain Momentum explicit", explicit_row(O.Momentum())))
    rows.append(("fluxtrain Momentum implicit", implicit_row(fluxtrain.optimise.Momentum())))
    rows.append(("fluxtrain Momentum explicit, flat", explicit_row(O.Momentum(), flat=True)))
    rows.append(("fluxtrain Momentum implicit, flat",
                 implicit_row(fluxtrain.optimise.Momentum(), flat=True)))
    return rows


def safe_rows(make_rows: Callable[[], list[Row]]) -> list[Row]:
    """Keep the rows that can be built and run once; report the others."""
    out: list[Row] = []
    for name, fn in make_rows():
        try:
            fn()
        except Exception as exc:  # a row that cannot run is reported, not fatal
            print(f"  skipped {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        out.append((name, fn))
    return out


def train_rows(scale: float) -> list[Row]:
    """Explicit train_ vs a hand-written torch loop; gradient() vs backward + .grad."""
    torch.manual_seed(0)
    n_items = max(2, int(20 * scale))
    data = [(torch.randn(64, 32), torch.randn(64, 1)) for _ in range(n_items)]

    def make_model() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 1))

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((m(x) - y) ** 2).mean()

    m1 = make_model()
    state = fluxtrain.setup(O.Adam(1e-4), m1)

    def run_train() -> None:
        fluxtrain.train_(loss_fn, m1, data, state, progress=False)

    m2 = make_model()
    opt = torch.optim.Adam(m2.parameters(), lr=1e-4, foreach=True)

    def run_hand() -> None:
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(m2, x, y).backward()
            opt.step()

    m3 = make_model()
    x0, y0 = data[0]

    def run_gradient() -> None:
        fluxtrain.gradient(lambda m: loss_fn(m, x0, y0), m3)

    def run_backward() -> None:
        for p in m3.parameters():
            p.grad = None
        loss_fn(m3, x0, y0).backward()
        [p.grad for p in m3.parameters()]

    return [
        ("explicit train_ (MLP, 1 epoch)", run_train),
        ("hand-written torch loop", run_hand),
        ("fluxtrain gradient()", run_gradient),
        ("loss.backward() + .grad", run_backward),
    ]


def codemod_rows() -> list[Row]:
    """Time of the codemod over every old-style example script."""
    from fluxtrain_migrate.engine import migrate_bytes

    files = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.py"))
    sources = [f.read_bytes() for f in files]
    lines = sum(s.count(b"\n") for s in sources)
    return [(f"codemod, {len(files)} example scripts ({lines} lines)",
             lambda: [migrate_bytes(s, str(f)) for s, f in zip(sources, files)])]


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one round (smoke test)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--output", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    # many short rounds: a slow spell of the shared host lands on every row alike
    scale, rounds, min_time = (0.05, 1, 0.02) if args.quick else (1.0, 21, 0.03)

    # the steady state: the step's C++ metadata reads built (or known unavailable) first
    meta = tensormeta.module(wait=True)
    lines = [
        "# Benchmark results",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'quick' if args.quick else 'full'} run, medians in ms per step. Ratios are what "
        "to compare (the host is shared): each is the median over rounds of the ratio within "
        "a round, where every row ran once in turn.",
        "",
        f"{native.describe()}; per-step checks: "
        + ("C++ bulk reads (fluxtrain.core.tensormeta)." if meta is not None
           else f"Python reads ({tensormeta.why_unavailable()})."),
        "",
    ]
    lines += optimiser_sections("cpu", scale, rounds, min_time)
    if torch.cuda.is_available():
        lines += [f"# CUDA: {torch.cuda.get_device_name()}", ""]
        lines += optimiser_sections("cuda", scale, rounds, min_time)
    else:
        lines += ["# CUDA", "", "No CUDA device present: the CUDA section was skipped.", ""]
        print("no CUDA device: CUDA section skipped", file=sys.stderr)
    lines += train_sections(scale, rounds, min_time)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(args.output).write_text(text)
    return 0


def optimiser_sections(device: str, scale: float, rounds: int, min_time: float) -> list[str]:
    """The optimiser-step tables of every case, with tensors on ``device``."""
    lines: list[str] = []
    for case, make in CASES.items():
        torch.manual_seed(0)
        tensors = [t.to(device) for t in make(scale)]
        numel = sum(t.numel() for t in tensors)
        print(f"case {case} ({device}): {len(tensors)} tensors, {numel} elements",
              file=sys.stderr)
        rows = [(name, synced(fn, device))
                for name, fn in safe_rows(functools.partial(optimiser_rows, tensors))]
        # the bandwidth is probed among the rows, so that it sees the same host as they do
        probe, triad_bytes = triad_row(device)
        res = measure(rows + [probe], rounds, min_time)
        triad_ms = res.median(TRIAD)
        adam_bound = bound_ms(numel, 28, triad_ms, triad_bytes)
        sgd_bound = bound_ms(numel, 20, triad_ms, triad_bytes)
        where = "" if device == "cpu" else f", {device}"
        lines += [f"## {case} ({len(tensors)} tensors, {numel:,} elements{where})", "",
                  "| row | ms | vs torch fused | vs torch foreach | vs bound | vs explicit |",
                  "|---|---|---|---|---|---|"]
        names = res.names()
        for name in names:
            if name == TRIAD:
                continue
            ms = res.median(name)
            family = ("Adam" if "Adam" in name
                      else "SGD-m" if ("SGD" in name or "Momentum" in name) else "")
            fused, foreach = f"torch {family} fused", f"torch {family} foreach"
            if not family or fused not in names or foreach not in names:
                lines.append(f"| {name} | {ms:.3f} | | | | |")
                continue
            # the bound of each round from that round's probe: ratio = ms * bandwidth
            per_byte = (28 if family == "Adam" else 20) * numel / triad_bytes
            vs_bound = res.ratio(name, TRIAD) / per_byte
            # an implicit row against its explicit twin, paired within rounds like the rest
            twin = name.replace(" implicit", " explicit")
            vs_explicit = (f"{res.ratio(name, twin):.2f}" if twin != name and twin in names
                           else "")
            lines.append(f"| {name} | {ms:.3f} | {res.ratio(name, fused):.2f} | "
                         f"{res.ratio(name, foreach):.2f} | {vs_bound:.2f} | {vs_explicit} |")
        lines += ["", f"Bandwidth bound: Adam {adam_bound:.3f} ms, SGD-momentum {sgd_bound:.3f} ms "
                  f"(triad {triad_bytes / triad_ms / 1e6:.1f} GB/s, probed among the rows).", ""]
        del tensors, rows
    return lines


def train_sections(scale: float, rounds: int, min_time: float) -> list[str]:
    """Training loop, gradient() and codemod tables (CPU)."""
    lines: list[str] = []
    # three times the rounds: an epoch is one sample of tens of ms, so a round holds only
    # one or two of them, and the ratios of a few samples spread by 20% on a shared host
    res = measure(safe_rows(lambda: train_rows(scale)), rounds * 3, min_time)
    lines += ["## Training loop and gradients", "", "| row | ms | ratio |", "|---|---|---|"]
    pairs = [("explicit train_ (MLP, 1 epoch)", "hand-written torch loop"),
             ("fluxtrain gradient()", "loss.backward() + .grad")]
    for ours, theirs in pairs:
        if ours in res.names() and theirs in res.names():
            lines.append(f"| {ours} | {res.median(ours):.3f} | {res.ratio(ours, theirs):.2f} |")
            lines.append(f"| {theirs} | {res.median(theirs):.3f} | 1.00 |")
    try:
        cres = measure(safe_rows(codemod_rows), 1, min_time)
        lines += ["", "## Codemod", "", "| row | ms |", "|---|---|"]
        lines += [f"| {k} | {cres.median(k):.1f} |" for k in cres.names()]
    except Exception as exc:
        print(f"  skipped codemod rows: {type(exc).__name__}: {exc}", file=sys.stderr)
    return lines


if __name__ == "__main__":
    raise SystemExit(main())

"""reference/optimisers.md §7.4: three float64 steps of every rule on one array.

x0 = [1, -2, 3]; gradients g1, g2, g3 below. The expected values are copied
from the table (printed to ~10 significant digits), so each is checked to
half a unit in its last printed digit.
"""

from __future__ import annotations

import pytest
import torch
from coreutil import init_all, step_all, step_batched

from fluxtrain.core import rules as R

X0 = [1.0, -2.0, 3.0]
GRADS = [[0.1, -0.2, 0.3], [-0.5, 0.5, 1.0], [0.2, 0.0, -0.4]]

# (rule, step 1, step 2, step 3) -- verbatim from §7.4
TABLE = [
    (R.Descent(0.1), "0.99, -1.98, 2.97", "1.04, -2.03, 2.87", "1.02, -2.03, 2.91"),
    (R.Momentum(), "0.999, -1.998, 2.997", "1.0031, -2.0012, 2.9843", "1.00479, -2.00408, 2.97687"),
    (R.Nesterov(), "0.99981, -1.99962, 2.99943", "1.000679, -2.000408, 2.997287",
     "1.0006311, -2.0006672, 2.9970183"),
    (R.RMSProp(), "0.9968377233, -1.996837723, 2.996837723",
     "0.999944572, -1.999794285, 2.993796227", "0.9987343386, -1.999794285, 2.994984632"),
    (R.RMSProp(centred=True), "0.9966666678, -1.996666667, 2.996666667",
     "0.9998795283, -1.999677623, 2.993369245", "0.9986629165, -1.999677623, 2.994587707"),
    (R.Rprop(), "0.999, -1.999, 2.999", "0.999, -1.999, 2.9978", "0.9985, -1.999, 2.9978"),
    (R.Adam(), "0.9990000001, -1.999, 2.999", "0.9995983543, -1.999442215, 2.998094765",
     "0.9997955492, -1.999784049, 2.997670035"),
    (R.Lion(), "0.999, -1.999, 2.999", "1, -2, 2.998", "0.999, -2.001, 2.999"),
    (R.RAdam(), "0.9999, -1.9998, 2.9997", "1.000115789, -1.999968421, 2.999031579",
     "1.000178151, -2.000074694, 2.998757409"),
    (R.AdaMax(), "0.9990000001, -1.999, 2.999", "0.999431579, -1.999336842, 2.998331579",
     "0.9995564271, -1.999549601, 2.998057135"),
    (R.OAdam(), "0.9980000002, -1.998, 2.998", "1.000625093, -2.000374651, 2.996967173",
     "0.9999025492, -2.000428981, 2.997674259"),
    (R.AdaGrad(), "0.90000006, -1.900000017, 2.900000009",
     "0.9980581238, -1.992847683, 2.804217382", "0.9615432879, -1.992847683, 2.839994469"),
    (R.AdaDelta(), "0.9996837738, -1.999683773, 2.999683772",
     "1.000123147, -2.000101893, 2.99925364", "0.9998862852, -2.000101893, 2.999483778"),
    (R.AMSGrad(), "0.9968393079, -1.996838124, 2.9968379",
     "0.9993820179, -1.998717325, 2.992991041", "1.000358162, -2.000408606, 2.990888536"),
    (R.NAdam(), "0.9985255785, -1.998525578, 2.998525578",
     "0.9996333921, -1.999496061, 2.997240953", "0.9995398326, -1.999738617, 2.997168347"),
    (R.AdamW(lambda_=0.1), "0.9989000001, -1.9988, 2.9987",
     "0.9993984643, -1.999042335, 2.997494895", "0.9994957193, -1.999184265, 2.996770416"),
    (R.AdamW(lambda_=0.1, couple=False), "0.8990000001, -1.799, 2.699",
     "0.8096983543, -1.619542215, 2.428194765", "0.7289257138, -1.457929827, 2.184950559"),
    (R.AdaBelief(), "0.9988888889, -1.998888889, 2.998888889",
     "0.9995411776, -1.999363816, 2.997854641", "0.9997506598, -1.999730332, 2.997393431"),
    (R.WeightDecay(0.1), "0.8, -1.6, 2.4", "1.22, -1.94, 1.16", "0.898, -1.746, 1.444"),
    (R.SignDecay(0.1), "0.8, -1.7, 2.6", "1.2, -2.1, 1.5", "0.9, -2, 1.8"),
    (R.ClipGrad(0.25), "0.9, -1.8, 2.75", "1.15, -2.05, 2.5", "0.95, -2.05, 2.75"),
    (R.ClipNorm(0.5), "0.9, -1.8, 2.7", "1.104124145, -2.004124145, 2.29175171",
     "0.9041241452, -2.004124145, 2.69175171"),
]


def _digits(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def _tolerance(text: str, cell: list[str]) -> float:
    """Half a unit in the last decimal place printed for this entry.

    The table prints ~10 significant digits; an entry printed without decimals
    ("1, -2, 2.998") is exact to the cell's finest precision.
    """
    digits = _digits(text) if "." in text else max(_digits(t) for t in cell)
    return 0.5 * 10.0**-digits


@pytest.mark.parametrize("path", ["per-leaf", "batched"])
@pytest.mark.parametrize("row", TABLE, ids=[repr(r[0]) for r in TABLE])
def test_single_array_reference(row, path):
    rule, *expected = row
    x = torch.tensor(X0, dtype=torch.float64)
    states = init_all(rule, [x])
    for k, (g, want) in enumerate(zip(GRADS, expected), start=1):
        gt = torch.tensor(g, dtype=torch.float64)
        if path == "per-leaf":
            states = step_all(rule, states, [x], [gt])
        else:
            states = step_batched(rule, states, [x], [gt])
        cell = [t.strip() for t in want.split(",")]
        for i, text in enumerate(cell):
            tol = _tolerance(text, cell) * (1 + 1e-9)
            assert abs(x[i].item() - float(text)) <= tol, (
                f"{rule!r} step {k} entry {i}: got {x[i].item()!r}, reference {text}"
            )

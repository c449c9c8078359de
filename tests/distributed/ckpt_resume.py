"""Fresh-process half of the resume test: python ckpt_resume.py CKPT_DIR OUT.

For each scenario: a fresh model (different initial weights), the checkpoint
read with ``torch.load(weights_only=True)``, steps 30..59, final parameters
saved to OUT.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ckptcommon as K  # noqa: E402


def main() -> None:
    ckdir, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    results = {}
    for name in K.SCENARIOS:
        ck = torch.load(os.path.join(ckdir, f"{name}.pt"), weights_only=True)
        model = K.make_model(seed=999)
        state = K.load(name, ck, model)
        K.train(name, model, state, K.HALF, K.TOTAL)
        results[name] = K.params_of(model)
    torch.save(results, out)


if __name__ == "__main__":
    main()

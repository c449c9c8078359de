# Source: Stack Overflow question "An unexpected variable reference change in a Julia Zygote gradient pullback" (Spanish mirror on mejorcodigo.com) @ 2021
# URL: https://www.mejorcodigo.com/p/99057.html
# Port: the asker's working variant (whole model body inside the do-block); the `let` block -> a function
#       that is called; Dense(10, 11) -> torch.nn.Linear; @show -> print.
import torch

import fluxtrain

torch.manual_seed(0)


def main():
    x = torch.rand(1, 10)

    v_layer = [
        torch.nn.Linear(10, 11),
        torch.nn.Linear(10, 12),
    ]

    ps = fluxtrain.Params([
        *[p for layer in v_layer for p in fluxtrain.params(layer)],
    ])  # fmt: skip

    def _gs():
        out = x
        for layer_idx, layer in enumerate(v_layer, start=1):
            print((layer_idx, tuple(x.shape)))
            out = layer(x)
        return out.sum()

    gs = fluxtrain.gradient(_gs, ps)
    print([tuple(gs[p].shape) if gs[p] is not None else None for p in ps])


main()

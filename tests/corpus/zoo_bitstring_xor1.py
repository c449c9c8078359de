# Source: FluxML/model-zoo, other/bitstring-parity/xor1.jl @ ab152da35cc7acb43baeb5dc4af7a4c96f374165 (2020-04-30)
# URL: https://github.com/FluxML/model-zoo/blob/ab152da35cc7acb43baeb5dc4af7a4c96f374165/other/bitstring-parity/xor1.jl
# Port: data.jl (same commit) inlined (gendata with torch's generator); Flux's stateful LSTM/reset! as a small torch helper;
#   sizes as in the original (LSTM(2, 20), 100 sequences, 20 epochs); throttle 10 s -> 1000 s (machine-speed independent output); `cd` dropped.
from dataclasses import dataclass

import torch

import fluxtrain
from fluxtrain import ADAM, params, throttle

torch.manual_seed(0)

# data.jl
alphabet = [False, True]  # 0, 1


def onehot(y, alphabet):
    return torch.tensor([float(y == a) for a in alphabet])


def onehotbatch(xs, alphabet):
    return torch.stack([onehot(x, alphabet) for x in xs])


def onecold(y):
    return y.argmax(dim=-1).item() + 1


def parity(x):
    r = False
    for b in x:
        r = r ^ b
    return r


def gendata(n, k):
    if isinstance(k, int):
        k = range(k, k + 1)
    X = [[bool(b) for b in torch.randint(0, 2, (int(torch.randint(k.start, k.stop, ())),))] for _ in range(n)]
    return [(onehotbatch(x, alphabet), onehot(y, alphabet)) for x, y in zip(X, [parity(x) for x in X])]


# xor1.jl
def logitcrossentropy(ŷ, y):
    return -(y * torch.log_softmax(ŷ, dim=-1)).sum()


class LSTM(torch.nn.Module):
    """Flux's stateful `LSTM(in, out)`: a cell whose state persists between calls until `reset!`."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.cell = torch.nn.LSTMCell(n_in, n_out)
        self.state = None

    def forward(self, x):
        h, c = self.cell(x.reshape(1, -1), self.state)
        self.state = (h, c)
        return h.reshape(-1)


def reset_(m):
    m.state = None


@dataclass
class Args:
    lr: float = 1e-3  # Learning rate
    epochs: int = 20  # Number of epochs for training
    train_len: int = 100  # Length of training data to be generated
    val_len: int = 10  # Length of Validation Data
    throttle: int = 1000  # Throttle timeout


def getdata(args):
    # Using gendata function defined in data.jl
    train = gendata(args.train_len, 2)
    val = gendata(args.val_len, 2)
    return train, val


def build_model():
    scanner = LSTM(len(alphabet), 20)
    encoder = torch.nn.Linear(20, len(alphabet))
    return scanner, encoder


def model(x, scanner, encoder):
    state = [scanner(xt) for xt in x][-1]
    reset_(scanner)
    return encoder(state)


def train(**kws):
    # Initialize the parameters
    args = Args(**kws)

    # Load Data
    train_data, val_data = getdata(args)

    print("[ Info: Constructing Model...")
    scanner, encoder = build_model()

    def loss(x, y):
        return logitcrossentropy(model(x, scanner, encoder), y)

    def batch_loss(data):
        return torch.stack([loss(*d) for d in data]).mean()

    opt = ADAM(args.lr)
    ps = params(scanner, encoder)
    evalcb = lambda: print(f"batch_loss(val_data) = {batch_loss(val_data).item():.6f}")  # noqa: E731

    print("[ Info: Training...")
    for i in range(1, args.epochs + 1):
        fluxtrain.train_(loss, ps, train_data, opt, cb=throttle(evalcb, args.throttle))

    return scanner, encoder


def test(scanner, encoder):
    # sanity test
    tx = [
        onehotbatch(c, alphabet)
        for c in [
            [False, True],  # 01 -> 1
            [True, False],  # 10 -> 1
            [False, False],  # 00 -> 0
            [True, True],  # 11 -> 0
        ]
    ]
    print("[ Info: Test...")
    out = [onecold(model(x, scanner, encoder)) - 1 for x in tx]
    input = [[0, 1], [1, 0], [0, 0], [1, 1]]
    for i in range(len(tx)):
        print(input[i], " => ", out[i], sep="")


scanner, encoder = train()
test(scanner, encoder)

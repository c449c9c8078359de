# Source: FluxML/model-zoo, text/char-rnn/char-rnn.jl @ 0a12d5664178aee6379ef061cc800e7cd9da269a (2021-12-19)
# URL: https://github.com/FluxML/model-zoo/blob/0a12d5664178aee6379ef061cc800e7cd9da269a/text/char-rnn/char-rnn.jl
# Port: Shakespeare download -> Sonnet 18 inline; LSTM 128 -> 16, seqlen 50 -> 10, nbatch 50 -> 4; Flux's stateful
#   LSTM/reset!/onehot/chunk/batchseq/wsample as small torch helpers; sample length 1000 -> 60; throttle 30 s -> 1000 s (output independent of machine speed); `cd` dropped.
import random
from dataclasses import dataclass

import torch

import fluxtrain
from fluxtrain import ADAM, params, throttle

torch.manual_seed(0)
random.seed(0)

TEXT = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""


def onehot(ch, alphabet):
    v = torch.zeros(len(alphabet))
    v[alphabet.index(ch)] = 1.0
    return v


def chunk(xs, n):
    size = -(-len(xs) // n)
    return [xs[i : i + size] for i in range(0, len(xs), size)]


def batchseq(xs, pad):
    n = max(len(x) for x in xs)
    return [torch.stack([x[t] if t < len(x) else pad for x in xs]) for t in range(n)]


def partition(xs, n):
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def logitcrossentropy(ŷ, y):
    return (-(y * torch.log_softmax(ŷ, dim=-1)).sum(dim=-1)).mean()


class LSTM(torch.nn.Module):
    """Flux's stateful `LSTM(in, out)`: a cell whose state persists between calls until `reset!`."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.cell = torch.nn.LSTMCell(n_in, n_out)
        self.state = None

    def forward(self, x):
        h, c = self.cell(x.reshape(-1, x.shape[-1]), self.state)
        self.state = (h, c)
        return h.reshape(*x.shape[:-1], -1)


def reset_(m):
    for layer in m.modules():
        if isinstance(layer, LSTM):
            layer.state = None


def wsample(alphabet, weights):
    return alphabet[torch.multinomial(weights, 1).item()]


@dataclass
class Args:
    lr: float = 1e-2  # Learning rate
    seqlen: int = 10  # Length of batch sequences
    nbatch: int = 4  # Number of batches text is divided into
    throttle: int = 1000  # Throttle timeout
    epochs: int = 2  # Number of Epochs


def getdata(args):
    text = list(TEXT)
    alphabet = [*dict.fromkeys(text), "_"]
    text = [onehot(ch, alphabet) for ch in text]
    stop = onehot("_", alphabet)

    N = len(alphabet)

    # Partitioning the data as sequence of batches, which are then collected as array of batches
    Xs = partition(batchseq(chunk(text, args.nbatch), stop), args.seqlen)
    Ys = partition(batchseq(chunk(text[1:], args.nbatch), stop), args.seqlen)

    return Xs, Ys, N, alphabet


# Function to construct model
def build_model(N):
    return torch.nn.Sequential(LSTM(N, 16), LSTM(16, 16), torch.nn.Linear(16, N))


def train(**kws):
    # Initialize the parameters
    args = Args(**kws)

    # Get Data
    Xs, Ys, N, alphabet = getdata(args)

    # Constructing Model
    m = build_model(N)

    def loss(xs, ys):
        reset_(m)
        return sum(logitcrossentropy(ŷ, y) for ŷ, y in zip([m(x) for x in xs], ys))

    ## Training
    opt = ADAM(args.lr)
    tx, ty = (Xs[4], Ys[4])

    evalcb = lambda: print(f"loss(tx, ty) = {loss(tx, ty).item():.4f}")  # noqa: E731

    print(f"[ Info: Start Training, total {args.epochs} epochs")
    for epoch in range(1, args.epochs + 1):
        print(f"[ Info: Epoch {epoch} / {args.epochs}")
        fluxtrain.train_(loss, params(m), zip(Xs, Ys), opt, cb=throttle(evalcb, args.throttle))

    return m, alphabet


# Sampling
def sample_data(m, alphabet, len, seed=""):
    reset_(m)
    buf = []
    if seed == "":
        seed = random.choice(alphabet)
    buf.append(seed)
    with torch.no_grad():
        c = wsample(alphabet, torch.softmax([m(onehot(c, alphabet)) for c in list(seed)][-1], dim=-1))
        for i in range(len):
            buf.append(c)
            c = wsample(alphabet, torch.softmax(m(onehot(c, alphabet)), dim=-1))
    return "".join(buf)


m, alphabet = train()
print(sample_data(m, alphabet, 60))

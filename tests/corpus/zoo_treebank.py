# Source: FluxML/model-zoo, text/treebank/recursive.jl @ 2cb0e2cfe0e53c8be51df64a8b6db7946ba65660 (2021-01-19)
# URL: https://github.com/FluxML/model-zoo/blob/2cb0e2cfe0e53c8be51df64a8b6db7946ba65660/text/treebank/recursive.jl
# Port: data.jl (same commit) inlined; Flux.Data.Sentiment treebank -> 24 random binary trees over a 12-token alphabet (labels 0:4 at every node);
#   N 300 -> 8; Flux.Data.Tree as a small class; throttle 10 s -> 1000 s (machine-speed independent output).
from dataclasses import dataclass

import torch

import fluxtrain
from fluxtrain import ADAM, params, throttle

torch.manual_seed(0)


def onehot(x, labels):
    v = torch.zeros(len(labels))
    v[list(labels).index(x)] = 1.0
    return v


def logitcrossentropy(ŷ, y):
    return -(y * torch.log_softmax(ŷ, dim=-1)).sum()


class Tree:
    def __init__(self, value, *children):
        self.value = value
        self.children = children

    def __getitem__(self, i):
        return self.children[i]


def isleaf(tree):
    return len(tree.children) == 0


# data.jl
def random_tree(alphabet, depth):
    label = int(torch.randint(0, 5, ()))
    if depth == 0 or torch.rand(()) < 0.3:
        return Tree((onehot(alphabet[int(torch.randint(0, len(alphabet), ()))], alphabet), onehot(label, range(5))))
    return Tree((None, onehot(label, range(5))), random_tree(alphabet, depth - 1), random_tree(alphabet, depth - 1))


def getdata():
    alphabet = [f"w{i}" for i in range(11)] + ["UNK"]
    train = [random_tree(alphabet, 3) for _ in range(24)]
    return train, alphabet


# recursive.jl
@dataclass
class Args:
    lr: float = 1e-3  # Learning rate
    N: int = 8
    throttle: int = 1000  # Throttle timeout


def train(**kws):
    # Initialize HyperParameters
    args = Args(**kws)

    # load data
    print("[ Info: Loading Data...")
    train_data, alphabet = getdata()

    print("[ Info: Constructing model....")
    embedding = torch.randn(args.N, len(alphabet))

    W = torch.nn.Sequential(torch.nn.Linear(2 * args.N, args.N), torch.nn.Tanh())

    def combine(a, b):
        return W(torch.cat([a, b]))

    sentiment = torch.nn.Sequential(torch.nn.Linear(args.N, 5))

    def forward(tree):
        if isleaf(tree):
            token, sent = tree.value
            phrase = embedding @ token
            return phrase, logitcrossentropy(sentiment(phrase), sent)
        else:
            _, sent = tree.value
            c1, l1 = forward(tree[0])
            c2, l2 = forward(tree[1])
            phrase = combine(c1, c2)
            return phrase, l1 + l2 + logitcrossentropy(sentiment(phrase), sent)

    def loss(tree):
        return forward(tree)[1]

    opt = ADAM(args.lr)
    ps = params(embedding, W, sentiment)
    evalcb = lambda: print(f"loss(train_data[1]) = {loss(train_data[0]).item():.6f}")  # noqa: E731
    print("[ Info: Training Model...")
    fluxtrain.train_(loss, ps, zip(train_data), opt, cb=throttle(evalcb, args.throttle))


train()

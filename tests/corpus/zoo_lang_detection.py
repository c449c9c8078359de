# Source: FluxML/model-zoo, text/lang-detection/model.jl @ ab152da35cc7acb43baeb5dc4af7a4c96f374165 (2020-04-30)
# URL: https://github.com/FluxML/model-zoo/blob/ab152da35cc7acb43baeb5dc4af7a4c96f374165/text/lang-detection/model.jl
# Port: the scraped Wikipedia corpus/*.txt -> three tiny inline corpora (en/de/fr, already case-folded and mark-free);
#   test_len 100 -> 6; throttle 10 s -> 1000 s (machine-speed independent output); stateful LSTM as a torch helper.
import random
from dataclasses import dataclass

import torch

import fluxtrain
from fluxtrain import ADAM, params, throttle

torch.manual_seed(0)
random.seed(0)

CORPORA = {
    "en": "the cat sat on the mat. it was a sunny day in the park. we went to the river and swam. "
    "she reads a book every night. the weather is cold in winter. my brother plays the guitar. "
    "they walked home after school. this is the best bread in town. he drinks coffee with milk",
    "de": "die katze sitzt auf der matte. es war ein sonniger tag im park. wir gingen zum fluss und schwammen. "
    "sie liest jeden abend ein buch. das wetter ist im winter kalt. mein bruder spielt gitarre. "
    "sie gingen nach der schule nach hause. das ist das beste brot der stadt. er trinkt kaffee mit milch",
    "fr": "le chat est assis sur le tapis. il faisait beau dans le parc. nous sommes alles a la riviere. "
    "elle lit un livre chaque soir. il fait froid en hiver. mon frere joue de la guitare. "
    "ils sont rentres apres l ecole. c est le meilleur pain de la ville. il boit du cafe au lait",
}


def onehot(x, labels, default=None):
    v = torch.zeros(len(labels))
    v[labels.index(x if x in labels else default)] = 1.0
    return v


def onehotbatch(xs, labels, default=None):
    return torch.stack([onehot(x, labels, default) for x in xs])


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
    for layer in m.modules():
        if isinstance(layer, LSTM):
            layer.state = None


@dataclass
class Args:
    lr: float = 1e-3  # learning rate
    N: int = 15  # Number of perceptrons in hidden layer
    test_len: int = 6  # length of test data
    langs_len: int = 0  # Number of different languages in Corpora
    alphabet_len: int = 0  # Total number of characters possible, in corpora
    throttle: int = 1000  # throttle timeout


def get_processed_data(args):
    corpora = {}

    for lang, text in CORPORA.items():
        corpus = text.split(".")
        corpus = [s.strip() for s in corpus]
        corpus = [s for s in corpus if s]
        corpora[lang] = corpus

    langs = list(corpora.keys())
    args.langs_len = len(langs)
    alphabet = [*"abcdefghijklmnopqrstuvwxyz", *"0123456789", " ", "\n", "_"]
    args.alphabet_len = len(alphabet)

    dataset = [(onehotbatch(s, alphabet, "_"), onehot(l, langs)) for l in langs for s in corpora[l]]  # noqa: E741
    random.shuffle(dataset)

    train, test = dataset[: -args.test_len], dataset[-args.test_len :]
    return train, test


def build_model(args):
    scanner = torch.nn.Sequential(
        torch.nn.Linear(args.alphabet_len, args.N), torch.nn.Sigmoid(), LSTM(args.N, args.N)
    )
    encoder = torch.nn.Linear(args.N, args.langs_len)
    return scanner, encoder


def model(x, scanner, encoder):
    state = [scanner(xt) for xt in x][-1]
    reset_(scanner)
    return encoder(state)


def train(**kws):
    # Initialize Hyperparameters
    args = Args(**kws)
    # Load Data
    train_data, test_data = get_processed_data(args)

    print("[ Info: Constructing Model...")
    scanner, encoder = build_model(args)

    def loss(x, y):
        return logitcrossentropy(model(x, scanner, encoder), y)

    def testloss():
        return torch.stack([loss(*t) for t in test_data]).mean()

    opt = ADAM(args.lr)
    ps = params(scanner, encoder)
    evalcb = lambda: print(f"testloss() = {testloss().item():.6f}")  # noqa: E731
    print("[ Info: Training...")
    fluxtrain.train_(loss, ps, train_data, opt, cb=throttle(evalcb, args.throttle))


train()

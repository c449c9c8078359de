# Source: FluxML/fluxml.github.io, blogposts/2019-09-11-simulating-the-motion-of-charges.md ("Simulating the Motion of Charges", fluxml.ai blog) @ 2019-09-11 (file at 01bcf14)
# URL: https://fluxml.ai/blogposts/2019-09-11-simulating-the-motion-of-charges/
# Port: struct Vertex -> dataclass with a float64 tensor position; 100 charges x 200 steps -> 10 x 40;
#       the post's undefined `distance` is written out; Zygote.gradient -> fluxtrain.gradient.
from dataclasses import dataclass

import torch

import fluxtrain
from fluxtrain import ADAM

torch.manual_seed(0)


@dataclass
class Vertex:  # represents the charged body
    charge: float
    pos: torch.Tensor  # x,y coordinates


# Create the req no. of charges with random positions and amplitudes
def create_env(no_ch):
    return [Vertex(torch.randn(()).item(), torch.randint(-5000, 5001, (2,), dtype=torch.float64) / 1000) for _ in range(no_ch)]


def potential_pair(a, b):  # classic potential formula
    return (8.9e9) * a.charge * b.charge / (((a.pos - b.pos) ** 2).sum().sqrt())


def potential(a):  # potential for a system of charges
    pot = 0
    for i in range(len(a)):  # nC2
        for j in range(i + 1, len(a)):
            pot = pot + potential_pair(a[i], a[j])
    return pot


def distance(v, p):
    return ((v.pos - torch.tensor(p, dtype=torch.float64)) ** 2).sum().sqrt()


def loss(env):
    s = 0
    for i in range(len(env)):
        # if charge moves outside circle of radius 5 centred at origin,
        # give it a high penalty
        # this is to constrain it otherwise large like charges would
        # just go to infinity and we wouldn't see much
        if distance(env[i], [0, 0]) - 5 > 0:
            s = s + 100 * (distance(env[i], [0, 0]) - 5)
    # scaling potential so the distance moved is acceptably small
    l = s + 1.0e-9 * potential(env)
    return l


env = create_env(10)
print(round(loss(env).item(), 4))

opt = ADAM(0.01)
for i in range(40):
    gs = fluxtrain.gradient(loss, env)
    for j in range(len(gs[0])):  # each j is a charge
        # making sure we update only the positions not the charge value
        fluxtrain.optimise.update_(opt, env[j].pos, gs[0][j].pos)

print(round(loss(env).item(), 4))

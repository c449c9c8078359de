# Source: FluxML/model-zoo, contrib/games/differentiable-programming/cartpole/DQN.jl @ e2fa45e421baa6d04e41c4f4abcbe5bb88a97d71 (2021-06-10)
# URL: https://github.com/FluxML/model-zoo/blob/e2fa45e421baa6d04e41c4f4abcbe5bb88a97d71/contrib/games/differentiable-programming/cartpole/DQN.jl
# Port: Gym's CartPole-v0 -> a small inline CartPole with the classic dynamics (seeded); `while true` -> at most 4 episodes,
#   100 test episodes -> 5; replay's targets built under torch.no_grad() (Julia records nothing outside gradient).
import math
import random

import torch

import fluxtrain
from fluxtrain import ADAM, InvDecay, params

torch.manual_seed(0)
random.seed(0)


class CartPole:
    """CartPole-v0: 4 observations, 2 actions, reward 1 per step, at most 200 steps, solved at 195."""

    reward_threshold = 195.0

    def __init__(self):
        self.train = True
        self.reset_()

    def reset_(self):
        self.s = [random.uniform(-0.05, 0.05) for _ in range(4)]
        self.done = False
        self.t = 0
        self.total_reward = 0.0

    def step_(self, a):
        x, x_dot, θ, θ_dot = self.s
        force = 10.0 if a == 2 else -10.0
        cosθ, sinθ = math.cos(θ), math.sin(θ)
        temp = (force + 0.05 * θ_dot**2 * sinθ) / 1.1
        θacc = (9.8 * sinθ - cosθ * temp) / (0.5 * (4.0 / 3.0 - 0.1 * cosθ**2 / 1.1))
        xacc = temp - 0.05 * θacc * cosθ / 1.1
        self.s = [x + 0.02 * x_dot, x_dot + 0.02 * xacc, θ + 0.02 * θ_dot, θ_dot + 0.02 * θacc]
        self.t += 1
        self.done = abs(self.s[0]) > 2.4 or abs(self.s[2]) > 12 * 2 * math.pi / 360 or self.t >= 200
        self.total_reward += 1.0
        return state(self), 1.0, self.done, None


def make(name):
    return CartPole()


def reset_(env):
    env.reset_()


def state(env):
    return torch.tensor(env.s, dtype=torch.float32)


def game_over(env):
    return env.done


def step_(env, a):
    return env.step_(a)


def trainable(env):
    return env.train


def testmode_(env, mode=True):
    env.train = not mode


def gpu(x):
    return x


# Load game environment
env = make("CartPole-v0")
reset_(env)

# ----------------------------- Parameters -------------------------------------

STATE_SIZE = len(state(env))  # 4
ACTION_SIZE = 2  # 2
MEM_SIZE = 100_000
BATCH_SIZE = 64
γ = 1.0  # discount rate

# Exploration params
ϵ = 1.0  # Initial exploration rate
ϵ_MIN = 1e-2  # Final exploratin rate
ϵ_DECAY = 995e-3

# Optimiser params
η = 1e-2  # Learning rate
η_decay = 1e-3

memory = []  # Used to remember past results

# ------------------------------ Model Architecture ----------------------------

model = gpu(
    torch.nn.Sequential(
        torch.nn.Linear(STATE_SIZE, 24),
        torch.nn.Tanh(),
        torch.nn.Linear(24, 48),
        torch.nn.Tanh(),
        torch.nn.Linear(48, ACTION_SIZE),
    )
)


def loss(x, y):
    return ((model(x) - y) ** 2).mean()


opt = fluxtrain.Optimiser(ADAM(η), InvDecay(η_decay))

# ----------------------------- Helper Functions -------------------------------


def get_ϵ(e):
    return max(ϵ_MIN, min(ϵ, 1.0 - math.log10(e * ϵ_DECAY)))


def remember(state, action, reward, next_state, done):
    memory.append((state, action, reward, next_state, done))
    del memory[:-MEM_SIZE]


def action(state, train=True):
    if train and random.random() <= get_ϵ(e):
        return random.choice([1, 2])
    with torch.no_grad():
        act_values = model(gpu(state))
    return int(act_values.argmax()) + 1


def replay():
    global ϵ
    batch_size = min(BATCH_SIZE, len(memory))
    minibatch = random.sample(memory, batch_size)

    x = []
    y = []
    with torch.no_grad():
        for iter, (state, action, reward, next_state, done) in enumerate(minibatch):
            target = reward
            if not done:
                target += γ * float(model(gpu(next_state)).max())

            target_f = model(gpu(state))
            target_f[action - 1] = target

            x.append(state)
            y.append(target_f)
    x = gpu(torch.stack(x))
    y = gpu(torch.stack(y))

    grads = fluxtrain.gradient(lambda: loss(x, y), params(model))
    fluxtrain.optimise.update_(opt, params(model), grads)

    ϵ *= ϵ_DECAY if ϵ > ϵ_MIN else 1.0


def episode_(env):
    reset_(env)
    while not game_over(env):
        # render(env)
        s = state(env)
        a = action(s, trainable(env))
        s_, r, done, _ = step_(env, a)
        trainable(env) and remember(s, a, r, s_, done)

    return env.total_reward


# -------------------------------- Testing -------------------------------------


def test(env):
    score_mean = 0.0
    testmode_(env)
    for _ in range(1, 6):
        total_reward = episode_(env)
        score_mean += total_reward / 5
    testmode_(env, False)
    return score_mean


# ------------------------------ Training --------------------------------------

e = 1
while e <= 4:
    total_reward = "%6.2f" % episode_(env)
    print(f"Episode: {e} | Score: {total_reward} | ", end="")
    replay()
    score_mean = test(env)
    score_mean_str = "%6.2f" % score_mean
    print("Mean score over 100 test episodes: " + score_mean_str, end="")
    print()
    if score_mean > env.reward_threshold:
        print("CartPole-v0 solved!")
        break
    e += 1

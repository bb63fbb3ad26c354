"""Every claim of exp_activation.py on synthetic tables built to hold, to fail, and to come out
inconclusive or not testable."""

import numpy as np
import pytest

import exp_activation as A
from synthetic import metrics, rows_for

ENV = "bsuite/cartpole"
SEEDS = range(5)


def verdicts(claim):
    return [e.verdict for e in claim.evidence]


def table(runs):
    """runs: [(columns, {metric: f(step)})] for every seed (the seed goes in as columns["seed"])."""
    return metrics([row for columns, values in runs for row in rows_for(columns, values)])


def activation_runs(srank_end, dormant=None, zero=None, env=ENV):
    runs = []
    for act in ("relu", "elu", "tanh"):
        for seed in SEEDS:
            end = srank_end(act, seed)
            values = {"srank": lambda t, e=end: 50.0 if t == 0 else e,
                      "dormant_frac": lambda t, a=act, s=seed: dormant(a, s) if dormant else 0.0,
                      "zero_frac": lambda t, a=act, s=seed: (zero(a, s, t) if zero else 0.0)}
            runs.append(({"study": "activation", "env": env, "agent": "dqn", "activation": act, "seed": seed}, values))
    return table(runs)


@pytest.mark.parametrize("relu_end, expected", [
    (lambda s: 5.0, "held"), (lambda s: 45.0, "not held"), (lambda s: 5.0 if s % 2 else 45.0, "inconclusive")])
def test_relu_collapses_most(relu_end, expected):
    m = activation_runs(lambda a, s: relu_end(s) if a == "relu" else 25.0)
    assert verdicts(A.claim_relu_collapses_most(m)) == [expected]


def test_relu_collapses_below_both():
    """ReLU below ELU but above tanh is not "ELU and tanh keep a higher rank than ReLU"."""
    m = activation_runs(lambda a, s: {"relu": 5.0, "elu": 50.0, "tanh": 3.0}[a])
    assert verdicts(A.claim_relu_collapses_most(m)) == ["not held"]


@pytest.mark.parametrize("relu, expected", [
    (lambda s: 0.5, "held"), (lambda s: 0.0, "not held"), (lambda s: 0.5 if s % 2 else 0.0, "inconclusive")])
def test_relu_dormant(relu, expected):
    m = activation_runs(lambda a, s: 20.0, dormant=lambda a, s: relu(s) if a == "relu" else 0.2)
    assert verdicts(A.claim_relu_dormant(m)) == [expected]


@pytest.mark.parametrize("end, expected", [
    (lambda s: 0.8, "held"), (lambda s: 0.1, "not held"), (lambda s: 0.8 if s % 2 else 0.1, "inconclusive")])
def test_relu_sparsity_grows(end, expected):
    m = activation_runs(lambda a, s: 20.0, zero=lambda a, s, t: 0.4 if t == 0 else end(s))
    assert verdicts(A.claim_relu_sparsity_grows(m)) == [expected]


@pytest.mark.parametrize("tanh_end, expected", [
    (lambda s: 45.0, "held"), (lambda s: 5.0, "not held"), (lambda s: 45.0 if s % 2 else 5.0, "inconclusive")])
def test_lstm(tanh_end, expected):
    runs = []
    for network, act in (("lstm", "tanh"), ("lstm", "relu"), ("mlp", "relu")):
        for seed in SEEDS:
            end = tanh_end(seed) if act == "tanh" else 20.0
            runs.append(({"study": "recurrent", "env": "bsuite/memory_len", "agent": "dqn", "network": network,
                          "activation": act, "seed": seed}, {"srank": lambda t, e=end: 50.0 if t == 0 else e}))
    assert verdicts(A.claim_lstm(table(runs))) == [expected]


def depth_runs(layer_slope, returns):
    runs = []
    for depth in (2, 4, 8):
        for seed in SEEDS:
            values = {f"srank_layer{k}": lambda t, k=k, s=seed, d=depth: 40.0 + layer_slope(d, s) * k
                      for k in range(1, depth + 1)}
            values["return"] = lambda t, d=depth, s=seed: returns(d, s)
            runs.append(({"study": "depth", "env": ENV, "agent": "dqn", "depth": depth, "seed": seed}, values))
    return table(runs)


@pytest.mark.parametrize("slope, expected", [
    (lambda d, s: -3.0, "held"),  # falls layer by layer at every depth
    (lambda d, s: 3.0, "not held"),
    (lambda d, s: 3.0 if d == 8 and s % 2 else -3.0, "inconclusive"),  # one depth disagrees in some seeds
])
def test_depth_layers(slope, expected):
    assert verdicts(A.claim_depth_layers(depth_runs(slope, lambda d, s: 0.0))) == [expected]


@pytest.mark.parametrize("slope, expected", [
    (lambda d, s: 3.0 if d == 2 else -3.0, "not held"),  # the 2-layer network counts: its rank rises
    (lambda d, s: 0.0 if d == 4 and s == 0 else -3.0, "inconclusive"),  # a flat profile does not fall (p = 2/32)
])
def test_depth_layers_every_depth(slope, expected):
    assert verdicts(A.claim_depth_layers(depth_runs(slope, lambda d, s: 0.0))) == [expected]


@pytest.mark.parametrize("returns, expected", [
    (lambda d, s: 100.0 / d, "held"), (lambda d, s: float(d), "not held"),
    (lambda d, s: 100.0 / d if s % 2 else float(d), "inconclusive"), (lambda d, s: 1.0, "not testable here")])
def test_depth_returns(returns, expected):
    assert verdicts(A.claim_depth_returns(depth_runs(lambda d, s: -1.0, returns))) == [expected]


@pytest.mark.parametrize("relu, expected", [
    (lambda s: 0.9, "held"), (lambda s: 0.1, "not held"), (lambda s: 0.9 if s % 2 else 0.1, "inconclusive")])
def test_hessian(relu, expected):
    rows = []
    for act in ("relu", "elu"):
        for seed in SEEDS:
            for t in A.near_zero_thresholds(867):
                share = relu(seed) if act == "relu" else 0.5
                rows.append({"study": "hessian", "env": "bsuite/catch", "agent": "dqn", "activation": act, "seed": seed,
                             "relative_threshold": t, "step": 100, "metric": "hessian_near_zero", "value": share})
    assert verdicts(A.claim_hessian(metrics(rows))) == [expected]


@pytest.mark.parametrize("num_params", [867, 10_000])  # n x eps below 1e-3, and above it
def test_hessian_decides_at_the_numerical_zero(num_params):
    """Only the share at n x eps decides, wherever n x eps falls among the other thresholds."""
    numerical = A.near_zero_thresholds(num_params)[0]
    rows = [{"study": "hessian", "env": "bsuite/catch", "agent": "dqn", "activation": act, "seed": seed,
             "relative_threshold": t, "step": 100, "metric": "hessian_near_zero",
             "value": (0.9 if t == numerical else 0.1) if act == "relu" else 0.5}
            for act in ("relu", "elu") for seed in SEEDS for t in A.near_zero_thresholds(num_params)]
    assert verdicts(A.claim_hessian(metrics(rows))) == ["held"]


def bottleneck_runs(returns, srank):
    runs = []
    for layers in (1, 2):
        for lr in (3e-4, 3e-3):
            for width in (2, 8, 32, 64):
                for seed in SEEDS:
                    runs.append(({"study": "bottleneck", "env": "bsuite/catch", "agent": "dqn", "layers": layers,
                                  "width": width, "lr": lr, "seed": seed},
                                 {"return": lambda t, w=width, s=seed: returns(w, s),
                                  "srank": lambda t, w=width, s=seed, r=lr: srank(w, s, r)}))
    return table(runs)


@pytest.mark.parametrize("returns, expected", [
    (lambda w, s: np.log(w), "held"), (lambda w, s: -np.log(w), "not held"),
    (lambda w, s: (1 if s % 2 else -1) * np.log(w), "inconclusive"), (lambda w, s: 1.0, "not testable here")])
def test_bottleneck_width(returns, expected):
    assert verdicts(A.claim_bottleneck_width(bottleneck_runs(returns, lambda w, s, r: 5.0))) == [expected]


@pytest.mark.parametrize("srank, expected", [
    (lambda w, s, r: 10.0 - 1000 * r, "held"), (lambda w, s, r: 10.0 + 1000 * r, "not held"),
    (lambda w, s, r: 10.0 + (1 if s % 2 else -1) * 1000 * r, "inconclusive")])
def test_bottleneck_lr(srank, expected):
    assert verdicts(A.claim_bottleneck_lr(bottleneck_runs(lambda w, s: 1.0, srank))) == [expected]

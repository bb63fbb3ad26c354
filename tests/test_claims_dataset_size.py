"""Every claim of exp_dataset_size.py on synthetic tables built to hold, to fail, and to come out
inconclusive or not testable."""

import numpy as np
import pytest

import exp_dataset_size as D
from synthetic import metrics, noise, rows_for

FRACTIONS = (0.05, 0.25, 1.0)
ENV = "minatar/breakout"


def size_table(fn, seeds=5):
    rows = []
    for f in FRACTIONS:
        for seed in range(seeds):
            columns = {"study": "size", "env": ENV, "agent": "dqn", "seed": seed, "fraction": f}
            rows += rows_for(columns, fn(f, seed))
    return metrics(rows)


def verdicts(claim):
    return [e.verdict for e in claim.evidence]


@pytest.mark.parametrize("metric", ["return", "srank"])
@pytest.mark.parametrize("small, expected", [(5.0, "held"), (50.0, "not held"), (None, "inconclusive")])
def test_smallest_fraction(metric, small, expected):
    def fn(f, seed):
        level = 20.0 if f == 1.0 else (small if small is not None else 20.0 + (3 if seed % 2 else -3)) if f == 0.05 \
            else 15.0
        return {metric: lambda t: level, "srank" if metric == "return" else "return": lambda t: 1.0}

    assert verdicts(D.claim_smallest_fraction(size_table(fn), metric)) == [expected]


@pytest.mark.parametrize("agree, expected", [
    (lambda seed: -1, "held"),  # the srank order is the reverse of the return order
    (lambda seed: 1, "not held"),  # the orders are the same
    (lambda seed: 1 if seed % 2 else -1, "inconclusive"),
])
def test_ordering(agree, expected):
    def fn(f, seed):
        k = FRACTIONS.index(f)
        return {"return": lambda t: float(k), "srank": lambda t: float(agree(seed) * k) + 10}

    assert verdicts(D.claim_ordering(size_table(fn))) == [expected]


# ---- data quality --------------------------------------------------------------------------------

DATA = [(0.0, 1.0), (0.5, 1.0), (0.1, 0.1)]  # noiseless, noisy, weak behaviour
LRS = (1e-4, 3e-4, 1e-3, 3e-3)
ENV_Q = "bsuite/cartpole"


def quality_table(fn, seeds=5, data=DATA):
    rows = []
    for d in data:
        columns = {"study": "quality", "env": ENV_Q, "noise": d[0], "behaviour_training": d[1]}
        rows.append({**columns, "agent": "behaviour", "seed": 0, "step": 0, "metric": "return", "value": 10.0})
        for lr in LRS:
            for seed in range(seeds):
                rows += rows_for({**columns, "agent": "dqn", "seed": seed, "lr": lr}, fn(d, lr, seed))
    return metrics(rows)


def phase_curve(rise: bool):
    return lambda t: 50.0 if t == 0 else 8.0 if t <= 400 else (30.0 if rise else 9.0)


@pytest.mark.parametrize("weak_rises, good_rises, expected", [
    (lambda lr, s: False, lambda lr, s: True, "held"),  # weak data: stuck in phase 1
    (lambda lr, s: True, lambda lr, s: False, "not held"),
    (lambda lr, s: s % 2 == 0, lambda lr, s: s % 2 == 1, "inconclusive"),
])
def test_quality_phases(weak_rises, good_rises, expected):
    def fn(d, lr, seed):
        rises = weak_rises(lr, seed) if d[1] < 1 else good_rises(lr, seed)
        return {"srank": phase_curve(rises), "return": lambda t: 0.0, "value_error": lambda t: 1.0}

    assert verdicts(D.claim_quality_phases(quality_table(fn))) == [expected]


def test_quality_phases_counts_no_collapse_as_no_phase():
    """Weak data whose srank never collapses is not "stuck in phase 1" (phase 1 is that collapse):
    against good data whose runs collapse and rise, neither share is phase 1, so no verdict."""
    def fn(d, lr, seed):
        srank = (lambda t: 50.0) if d[1] < 1 else phase_curve(True)
        return {"srank": srank, "return": lambda t: 0.0, "value_error": lambda t: 1.0}

    assert verdicts(D.claim_quality_phases(quality_table(fn))) == ["inconclusive"]


def test_quality_phases_not_testable_without_a_weak_dataset():
    fn = lambda d, lr, seed: {"srank": phase_curve(True), "return": lambda t: 0.0, "value_error": lambda t: 1.0}
    assert verdicts(D.claim_quality_phases(quality_table(fn, data=DATA[:2]))) == ["not testable here"]


def error_table(good_sign, weak_sign, scatter=0.1):
    """srank along training; the value error moves with it by ``sign`` per dataset, give or take
    ``scatter``."""
    def fn(d, lr, seed):
        sign = (weak_sign if d[1] < 1 else good_sign)(seed)
        srank = lambda t: 10 + 20 * np.sin(t / 3000 + lr * 1000) + noise("s", t, lr, seed)
        return {"srank": srank, "return": lambda t: 0.0,
                "value_error": lambda t: 50 + sign * (srank(t) - 10) + scatter * noise("v", t, lr, seed)}
    return quality_table(fn)


@pytest.mark.parametrize("good, scatter, expected", [
    (lambda s: -1, 0.1, "held"), (lambda s: 1, 0.1, "not held"), (lambda s: 1 if s % 2 else -1, 0.1, "inconclusive"),
    (lambda s: -1, 80.0, "not held"),  # an anti-correlation in every seed, but a weak one (rho about -0.3)
])
def test_value_error(good, scatter, expected):
    assert verdicts(D.claim_value_error(error_table(good, lambda s: 0, scatter))) == [expected]


@pytest.mark.parametrize("weak, expected", [
    (lambda s: 0, "held"),  # poor data: no anti-correlation, good data: strong
    (lambda s: -3, "not held"),  # poor data anti-correlate even more (a steeper, noiseless relation is as strong)
    (lambda s: 1 if s % 2 else -1, "inconclusive"),
])
def test_value_error_poor_data(weak, expected):
    table = error_table(lambda s: -1 if expected != "not held" else 1, weak)
    assert verdicts(D.claim_value_error_poor_data(table)) == [expected]

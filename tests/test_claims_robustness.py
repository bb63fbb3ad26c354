"""Every claim of exp_robustness.py on synthetic tables built to hold, to fail, and to come out
inconclusive."""

import pytest

import exp_robustness as R
from synthetic import metrics, rows_for

ENV = "minatar/breakout"
SEEDS = range(5)
AGENTS = (("dqn", 3e-4), ("bc", 3e-4), ("bc", 3e-2))


def table(fn):
    """fn(agent, lr, seed) -> {metric: value} for the training metrics, and the perturbed returns
    {(kind, level): value}."""
    rows = []
    for agent, lr in AGENTS:
        for seed in SEEDS:
            columns = {"study": "robustness", "env": ENV, "agent": agent, "lr": lr, "seed": seed}
            values, perturbed = fn(agent, lr, seed)
            rows += rows_for(columns, {k: v if callable(v) else (lambda t, v=v: v) for k, v in values.items()})
            rows += [{**columns, "perturbation": kind, "level": level, "step": 20000, "metric": "return_perturbed",
                      "value": v} for (kind, level), v in perturbed.items()]
    return metrics(rows)


def verdicts(claim):
    return [e.verdict for e in claim.evidence]


def basic(dqn_srank, bc_srank, dqn_return, bc_return, dead_large=0.0):
    def fn(agent, lr, seed):
        default = agent == "dqn"
        values = {"srank": dqn_srank(seed) if default else bc_srank(seed),
                  "return": dqn_return(seed) if default else bc_return(seed),
                  "dead_units": dead_large if lr == 3e-2 else 0.0}
        return values, {(k, level): 10.0 for k in ("shift", "scale") for level in (0.0, 1.0)}
    return table(fn)


ALT = lambda hi, lo: (lambda s: hi if s % 2 else lo)


@pytest.mark.parametrize("bc, expected", [(lambda s: 50.0, "held"), (lambda s: 5.0, "not held"),
                                          (ALT(50.0, 5.0), "inconclusive")])
def test_bc_rank(bc, expected):
    """Both start at srank 50; DQN ends at 20 (collapsed: 0.4 of it), BC at 50 (kept), 5 (collapsed) or either."""
    srank = lambda end: (lambda s: (lambda t, e=end(s): 50.0 if t == 0 else e))
    m = basic(srank(lambda s: 20.0), srank(bc), lambda s: 1.0, lambda s: 1.0)
    assert verdicts(R.claim_bc_rank(m)) == [expected]


def test_bc_rank_needs_dqn_to_collapse():
    """BC ends higher than DQN, but DQN kept 0.9 of its rank: no collapse, so not the paper's contrast."""
    srank = lambda end: (lambda s: (lambda t: 50.0 if t == 0 else end))
    m = basic(srank(45.0), srank(55.0), lambda s: 1.0, lambda s: 1.0)
    assert verdicts(R.claim_bc_rank(m)) == ["not held"]


@pytest.mark.parametrize("dqn, expected", [(lambda s: 30.0, "held"), (lambda s: 5.0, "not held"),
                                           (ALT(30.0, 5.0), "inconclusive")])
def test_dqn_return(dqn, expected):
    m = basic(lambda s: 20.0, lambda s: 20.0, dqn, lambda s: 10.0)
    assert verdicts(R.claim_dqn_return(m)) == [expected]


@pytest.mark.parametrize("kind", ["shift", "scale"])
@pytest.mark.parametrize("dqn_keeps, expected", [(lambda s: 0.9, "held"), (lambda s: 0.1, "not held"),
                                                 (ALT(0.9, 0.1), "inconclusive")])
def test_robustness(kind, dqn_keeps, expected):
    def fn(agent, lr, seed):
        keeps = dqn_keeps(seed) if agent == "dqn" else 0.5  # the share of the clean return kept when perturbed
        perturbed = {(k, level): 10.0 * (keeps if level > 0 and k == kind else 1.0)
                     for k in ("shift", "scale") for level in (0.0, 1.0, 2.0)}
        return {"srank": 10.0, "return": 10.0, "dead_units": 0.0}, perturbed

    assert verdicts(R.claim_robustness(table(fn), kind)) == [expected]


@pytest.mark.parametrize("dead, expected", [(30.0, "held"), (-1.0, "not held"), (0.0, "inconclusive")])
def test_bc_large_lr(dead, expected):
    m = basic(lambda s: 20.0, lambda s: 20.0, lambda s: 1.0, lambda s: 1.0, dead_large=dead)
    assert verdicts(R.claim_bc_large_lr(m)) == [expected]

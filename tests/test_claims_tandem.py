"""Every claim of exp_tandem.py on synthetic tables built to hold, to fail, and to come out
inconclusive or not testable."""

import pytest

import exp_tandem as T
from synthetic import metrics, rows_for

ENV = "bsuite/cartpole"
SEEDS = range(5)
ALT = lambda a, b: (lambda s: a if s % 2 else b)


def verdicts(claim):
    return [e.verdict for e in claim.evidence]


def tandem_table(active, passive, optimizers=("adam", "rmsprop")):
    """active/passive(optimizer, seed) -> {metric: value}."""
    rows = []
    for opt in optimizers:
        for agent, fn in (("active", active), ("passive", passive)):
            for seed in SEEDS:
                columns = {"study": "tandem", "env": ENV, "agent": agent, "optimizer": opt, "seed": seed}
                rows += rows_for(columns, {k: (lambda t, v=v: v) for k, v in fn(opt, seed).items()})
    return metrics(rows)


@pytest.mark.parametrize("metric, claim", [("return", T.claim_passive_return), ("srank", T.claim_passive_rank)])
@pytest.mark.parametrize("passive, expected", [(lambda s: 1.0, "held"), (lambda s: 99.0, "not held"),
                                               (ALT(1.0, 99.0), "inconclusive")])
def test_passive_below_active(metric, claim, passive, expected):
    m = tandem_table(lambda o, s: {metric: 50.0}, lambda o, s: {metric: passive(s)})
    assert verdicts(claim(m)) == [expected, expected]


def test_passive_return_not_testable_when_both_solve_the_task():
    m = tandem_table(lambda o, s: {"return": 1.0}, lambda o, s: {"return": 1.0})
    assert verdicts(T.claim_passive_return(m)) == ["not testable here"] * 2


@pytest.mark.parametrize("metric", ["srank", "return"])
@pytest.mark.parametrize("rmsprop_minus_adam, expected_rank", [(lambda s: 10.0, "held"), (lambda s: -10.0, "not held"),
                                                               (ALT(10.0, -10.0), "inconclusive")])
def test_optimizers(metric, rmsprop_minus_adam, expected_rank):
    m = tandem_table(lambda o, s: {metric: 30.0 + (rmsprop_minus_adam(s) if o == "rmsprop" else 0.0)},
                     lambda o, s: {metric: 0.0})
    # Adam's claims run the other way round: a lower rank, a higher return.
    flipped = {"held": "not held", "not held": "held", "inconclusive": "inconclusive"}
    expected = expected_rank if metric == "srank" else flipped[expected_rank]
    assert verdicts(T.claim_optimizers(m, metric)) == [expected]


def test_optimizers_not_testable_with_one_optimizer():
    m = tandem_table(lambda o, s: {"srank": 1.0}, lambda o, s: {"srank": 1.0}, optimizers=("adam",))
    assert verdicts(T.claim_optimizers(m, "srank")) == ["not testable here"]


def forked_table(after):
    """after(agent, seed) -> (return, srank) at the end; at the fork all three agents have (100, 20)."""
    rows = []
    for agent in T.FORKED:
        for seed in SEEDS:
            columns = {"study": "forked", "env": ENV, "agent": agent, "optimizer": "adam", "seed": seed}
            ret, rank = after(agent, seed)
            rows += rows_for(columns, {"return": lambda t, r=ret: 100.0 if t <= 10000 else r,
                                       "srank": lambda t, k=rank: 20.0 if t <= 10000 else k},
                             steps=range(10000, 20001, 1000))
    return metrics(rows)


@pytest.mark.parametrize("dqn_return, expected", [(lambda s: 10.0, "held"), (lambda s: 95.0, "not held"),
                                                  (ALT(10.0, 95.0), "inconclusive")])
def test_forked_return(dqn_return, expected):
    m = forked_table(lambda a, s: (dqn_return(s) if a == "forked_dqn" else 80.0, 20.0))
    assert verdicts(T.claim_forked_return(m)) == [expected]


def test_forked_return_not_testable_without_any_change():
    assert verdicts(T.claim_forked_return(forked_table(lambda a, s: (100.0, 20.0)))) == ["not testable here"]


def test_forked_return_needs_q_learning_to_fall():
    """Every return rises after the fork, Q-learning's least: nothing collapsed."""
    m = forked_table(lambda a, s: (110.0 if a == "forked_dqn" else 150.0, 20.0))
    assert verdicts(T.claim_forked_return(m)) == ["not held"]


@pytest.mark.parametrize("dqn_rank, expected", [(lambda s: 20.0, "held"), (lambda s: 60.0, "not held"),
                                                (ALT(20.0, 60.0), "inconclusive")])
def test_forked_rank(dqn_rank, expected):
    m = forked_table(lambda a, s: (50.0, dqn_rank(s) if a == "forked_dqn" else 40.0))
    assert verdicts(T.claim_forked_rank(m)) == [expected]


def test_forked_rank_needs_the_others_to_rise():
    """All three ranks fall after the fork, Q-learning's most: the others do not "go up"."""
    m = forked_table(lambda a, s: (50.0, 5.0 if a == "forked_dqn" else 15.0))
    assert verdicts(T.claim_forked_rank(m)) == ["not held"]

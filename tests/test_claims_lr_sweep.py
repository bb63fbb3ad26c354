"""Every claim of exp_lr_sweep.py on synthetic tables built to hold, to fail, and to come out
inconclusive or not testable."""

import dataclasses
import types

import numpy as np
import pytest

import exp_lr_sweep as L
from synthetic import LRS, metrics, noise, rows_for, sweep

CFG = L.PRESETS["cpu"]
X = (np.log10(LRS) - np.log10(LRS).mean()) / np.log10(LRS).std()  # standardised log learning rate


def const(v):
    return lambda t: v


def verdicts(claim):
    return [e.verdict for e in claim.evidence]


def run_claim(claim_fn, table, *extra):
    envs = table.values("env", agent="dqn")
    return claim_fn(table, envs, *extra)


# ---- inverted U ----------------------------------------------------------------------------------

def srank_table(shape):
    return sweep(lambda i, seed, **_: {"srank": const(shape(X[i], seed)), "return": const(0.0),
                                       "dead_units": const(0.0)})


@pytest.mark.parametrize("shape, expected", [
    (lambda x, s: 40 - 10 * x**2 + noise("u", x, s), "held"),  # low at both ends
    (lambda x, s: 10 + 8 * x**2 + noise("u", x, s), "not held"),  # high at both ends
    (lambda x, s: 30 + (5 if s % 2 else -5) * x**2, "inconclusive"),  # seeds disagree
    (lambda x, s: 1.0 + 0 * x, "not testable here"),  # collapsed at every rate: no shape (the fit's sign is noise)
    (lambda x, s: 60 - 30 * max(x, 0) ** 2 + noise("u", x, s), "not held"),  # a plateau that falls: high at small rates
])
def test_inverted_u(shape, expected):
    claim = run_claim(L.claim_inverted_u, srank_table(shape))
    assert verdicts(claim) == [expected] and claim.verdict == expected


# ---- the srank peak moves to lower learning rates -------------------------------------------------

@pytest.mark.parametrize("direction, expected", [(-1, "held"), (1, "not held"), (0, "inconclusive")])
def test_srank_shift(direction, expected):
    def fn(i, seed, **_):
        def srank(t):
            centre = 0.8 * (direction if direction else (1 if seed % 2 else -1)) * (t / 20000) * 2 - 0.0
            return 40 * np.exp(-((X[i] - centre) ** 2)) + 1
        return {"srank": srank, "return": const(0.0), "dead_units": const(0.0)}

    claim = run_claim(L.claim_srank_shift, sweep(fn), CFG)
    assert verdicts(claim) == [expected]


# ---- dead units rise with the learning rate; dead units and srank --------------------------------

@pytest.mark.parametrize("dead, expected", [
    (lambda i, s: 3 * i + (s % 2), "held"),
    (lambda i, s: 40 - 3 * i + (s % 2), "not held"),
    (lambda i, s: 0.0, "not testable here"),
])
def test_dead_units_rise(dead, expected):
    table = sweep(lambda i, seed, **_: {"dead_units": const(dead(i, seed)), "srank": const(30.0),
                                        "return": const(0.0)})
    assert verdicts(run_claim(L.claim_dead_units_rise, table)) == [expected]


@pytest.mark.parametrize("srank, expected", [
    (lambda d, s: 60 - d + noise("d", d, s), "held"),  # strongly anti-correlated where units live
    (lambda d, s: 20 + d + noise("d", d, s), "not held"),  # rank rises with dead units
    (None, "not testable here"),
])
def test_dead_units_srank(srank, expected):
    def fn(i, seed, **_):
        dead = 0.0 if srank is None else 3.0 * i  # 0..33: mostly under the half-alive bound
        rank = 30.0 if srank is None else srank(dead, seed)
        return {"dead_units": const(dead), "srank": const(rank), "return": const(0.0)}

    assert verdicts(run_claim(L.claim_dead_units_srank, sweep(fn))) == [expected]


def test_dead_units_srank_ignores_the_forced_correlation_of_dead_networks():
    # Every run either keeps all units (random srank) or loses nearly all (srank 1 by construction):
    # the raw correlation is strong, but among half-alive runs there is nothing to test.
    def fn(i, seed, **_):
        dead = 0.0 if i < 6 else 64.0 - (i % 3)
        return {"dead_units": const(dead), "srank": const(1.0 if dead > 32 else 30 + 5 * noise(i, seed)),
                "return": const(0.0)}

    assert verdicts(run_claim(L.claim_dead_units_srank, sweep(fn))) == ["not testable here"]


# ---- phases --------------------------------------------------------------------------------------

def phase_curve(collapse: bool, rise: bool):
    def srank(t):
        if not collapse:
            return 50.0
        if t == 0:
            return 50.0
        if t <= 400:
            return 8.0  # abrupt: within the early window
        return 30.0 if rise else 9.0
    return srank


@pytest.mark.parametrize("rises, expected", [
    (lambda i, s: i == 4, "held"),  # every seed rises at one learning rate
    (lambda i, s: False, "not held"),  # every seed collapses and never rises
    (lambda i, s: i == 4 and s < 3, "inconclusive"),  # 3 of 5 seeds
])
def test_phases(rises, expected):
    table = sweep(lambda i, seed, **_: {"srank": phase_curve(True, rises(i, seed)), "return": const(0.0),
                                        "dead_units": const(0.0)})
    assert verdicts(run_claim(L.claim_phases, table)) == [expected]


def test_phases_not_testable_without_an_early_collapse():
    table = sweep(lambda i, seed, **_: {"srank": phase_curve(False, False), "return": const(0.0),
                                        "dead_units": const(0.0)})
    assert verdicts(run_claim(L.claim_phases, table)) == ["not testable here"]


def test_a_gradual_decline_is_not_an_abrupt_collapse():
    gradual = lambda t: 50.0 - 40.0 * min(t, 20000) / 20000 + (25.0 if t > 15000 else 0.0)
    table = sweep(lambda i, seed, **_: {"srank": gradual, "return": const(0.0), "dead_units": const(0.0)})
    assert verdicts(run_claim(L.claim_phases, table)) == ["not testable here"]


# ---- early vs late collapse and dead units -------------------------------------------------------

def three_phases(dead_early, dead_late, late=True):
    def fn(i, seed, **_):
        def srank(t):
            if t == 0:
                return 50.0
            if t <= 400:
                return 8.0
            if t < 12000 or not late:
                return 40.0
            return 3.0
        def dead(t):
            if 0 < t <= 400:
                return dead_early
            return dead_late if t >= 12000 and late else 5.0
        return {"srank": srank, "dead_units": dead, "return": const(0.0)}
    return fn


@pytest.mark.parametrize("fn, expected", [
    (three_phases(2.0, 50.0), "held"),
    (three_phases(50.0, 2.0), "not held"),
    (three_phases(2.0, 50.0, late=False), "not testable here"),
    (three_phases(40.0, 60.0), "not held"),  # more in phase 3, but many in phase 1 already
])
def test_early_vs_late_dead(fn, expected):
    assert verdicts(run_claim(L.claim_early_vs_late_dead, sweep(fn))) == [expected]


def test_phases_are_keyed_by_seed_whatever_the_order_written():
    """Seed 4 never collapses late; the table lists the seeds from 4 down to 0."""
    late, never = three_phases(2.0, 50.0), three_phases(2.0, 50.0, late=False)
    table = sweep(lambda i, seed, **kw: (never if seed == 4 else late)(i, seed), seeds=(4, 3, 2, 1, 0))
    runs = L.phases(table, L.sweep_of(table, "bsuite/catch"))
    assert [runs[LRS[0], s].late_collapse for s in range(5)] == [True, True, True, True, False]


# ---- TD against BC -------------------------------------------------------------------------------

def onset_table(dqn_onset, bc_onset):
    def fn(agent, i, seed, **_):
        onset = dqn_onset if agent == "dqn" else bc_onset
        collapsed = onset is not None and i >= onset(seed)
        return {"srank": lambda t: 40.0 if t == 0 or not collapsed else 2.0,
                "dead_units": const(50.0 if collapsed else 0.0), "return": const(0.0)}
    return sweep(fn, agents=("dqn", "bc"))


@pytest.mark.parametrize("dqn, bc, expected", [
    (lambda s: 6, lambda s: 9, "held"),
    (lambda s: 9, lambda s: 6, "not held"),
    (lambda s: 6 + (s % 2), lambda s: 7 - (s % 2), "inconclusive"),
    (None, None, "not testable here"),
])
def test_td_vs_bc(dqn, bc, expected):
    assert verdicts(run_claim(L.claim_td_vs_bc, onset_table(dqn, bc))) == [expected]


# ---- offline policy selection --------------------------------------------------------------------

def selection_table(srank_good_early: bool, srank_good_late: bool, equal_returns=False, dead_good_late=None):
    """dead units pick well where srank does not, unless dead_good_late says otherwise at the end."""
    dead_good_late = not srank_good_late if dead_good_late is None else dead_good_late
    def fn(i, seed, **_):
        ret = const(0.0) if equal_returns else const(float(i))  # the largest learning rate is best
        def srank(t):
            good = srank_good_early if t <= 4000 else srank_good_late
            return float(i if good else 11 - i) + 1
        def dead(t):
            good = not srank_good_early if t <= 4000 else dead_good_late
            return float(11 - i if good else i)
        return {"srank": srank, "dead_units": dead, "return": ret}
    return sweep(fn)


@pytest.mark.parametrize("table, expected", [
    (selection_table(True, True), "held"),
    (selection_table(False, False), "not held"),
    (selection_table(True, True, equal_returns=True), "not testable here"),
])
def test_selection(table, expected):
    assert verdicts(run_claim(L.claim_selection, table, CFG)) == [expected]


@pytest.mark.parametrize("table, expected", [
    (selection_table(True, False), "held"),  # srank good early, dead units good late
    (selection_table(False, True), "not held"),
    (selection_table(True, True, equal_returns=True), "not testable here"),
    (selection_table(True, True, dead_good_late=True), "inconclusive"),  # dead units only catch up: a tie
])
def test_selection_reversal(table, expected):
    assert verdicts(run_claim(L.claim_selection_reversal, table, CFG)) == [expected]


# ---- the best learning rate falls along training -------------------------------------------------

@pytest.mark.parametrize("best, expected", [
    (lambda t, s: 11 - int(t / 2000), "held"),  # later: a smaller rate is best
    (lambda t, s: min(11, int(t / 2000)), "not held"),
    (lambda t, s: 5, "not testable here"),  # never changes: rho undefined in every seed
])
def test_best_lr_falls(best, expected):
    table = sweep(lambda i, seed, **_: {"return": lambda t: -abs(i - best(t, seed)), "srank": const(30.0),
                                        "dead_units": const(0.0)})
    assert verdicts(run_claim(L.claim_best_lr_falls, table)) == [expected]


# ---- rank against return -------------------------------------------------------------------------

@pytest.mark.parametrize("ret, expected", [
    (lambda i, s: 10 - abs(i - 6) + noise("r", i, s), "held"),  # return peaks where srank does
    (lambda i, s: abs(i - 6) + noise("r", i, s), "not held"),
    (lambda i, s: (1 if s % 2 else -1) * abs(i - 6), "inconclusive"),
])
def test_rank_return(ret, expected):
    table = sweep(lambda i, seed, **_: {"srank": const(40 - 3 * abs(i - 6)), "return": const(ret(i, seed)),
                                        "dead_units": const(0.0)})
    assert verdicts(run_claim(L.claim_rank_return, table)) == [expected]


# ---- minibatch size ------------------------------------------------------------------------------

@pytest.mark.parametrize("sweep_batch, other_batch", [(32, 256), (256, 32)])  # the cpu preset's, the paper's
def test_the_sweep_is_the_batch_size_with_every_rate(sweep_batch, other_batch):
    """The analyses read the sweep at its own minibatch size, the one run at every learning rate,
    whether the minibatch study's size is larger (bsuite) or smaller (the paper's Atari)."""
    rows = []
    for batch, lrs in ((sweep_batch, LRS), (other_batch, LRS[::3])):
        for lr in lrs:
            rows += rows_for({"study": "lr_sweep", "env": "bsuite/catch", "agent": "dqn", "seed": 0, "lr": lr,
                              "batch_size": batch}, {"srank": const(1.0)})
    table = metrics(rows)
    assert L.sweep_of(table, "bsuite/catch")["batch_size"] == sweep_batch
    assert L.rates(table, L.sweep_of(table, "bsuite/catch")) == LRS


@pytest.mark.parametrize("slopes, expected", [
    ([(1, -1)] * 5, "held"),  # the correlation reverses at the large batch: it depends on the batch size
    ([(1, 1)] * 5, "not held"),  # the same correlation at both batch sizes
    ([(1, -1), (-1, 1), (1, -1), (-1, 1), (1, 1)], "inconclusive"),  # seeds disagree
])
def test_batch_size(slopes, expected):
    """slopes[seed] = (return slope at batch 32, at batch 256) over the learning rates."""
    def fn(batch, i, seed, **_):
        slope = slopes[seed][0 if batch == 32 else 1]
        return {"srank": const(10.0 + i), "return": const(slope * i), "dead_units": const(0.0)}

    table = sweep(fn, batch_sizes=(32, 256))
    assert verdicts(run_claim(L.claim_batch_size, table)) == [expected]


@pytest.mark.parametrize("sweep_batch, other_batch", [(32, 256), (256, 32)])  # the cpu preset's, the paper's
def test_batch_size_compares_the_rates_both_sizes_ran(sweep_batch, other_batch):
    """At ``paper`` the sweep is at batch 256 and the minibatch study's size, 32, runs every third
    rate: the claim must compare over those rates (it read every rate of the larger size before)."""
    rows = []
    for batch, lrs in ((sweep_batch, LRS), (other_batch, LRS[::3])):
        for i, lr in enumerate(lrs):
            for seed in range(5):  # the correlation reverses at batch 256 in every seed
                slope = 1 if batch == 32 else -1
                rows += rows_for({"study": "lr_sweep", "env": "bsuite/catch", "agent": "dqn", "seed": seed, "lr": lr,
                                  "batch_size": batch}, {"srank": const(10.0 + i), "return": const(slope * i)})
    claim = run_claim(L.claim_batch_size, metrics(rows))
    assert verdicts(claim) == ["held"] and claim.evidence[0].note.endswith(f"{len(LRS[::3])} rates")


def test_the_minibatch_study_trains_every_few_rates_for_its_own_length(monkeypatch, tmp_path):
    """run() states the protocol: the sweep at batch_size for num_steps on every rate, the minibatch
    study at large_batch_size for large_batch_steps on every large_batch_stride-th rate (the
    trainer is replaced by a recorder, so nothing is compiled)."""
    calls = []

    def record(net, ds, loss, members, train, **kwargs):
        calls.append((kwargs["columns"]["agent"], train.batch_size, train.num_steps,
                      sorted({m.learning_rate for m in members})))
        return types.SimpleNamespace(rows=[])

    monkeypatch.setattr(L.C, "replay_data", lambda *a, **k: types.SimpleNamespace(num_actions=3))
    monkeypatch.setattr(L.C, "train_offline", record)
    monkeypatch.setattr(L.C, "write_metrics", lambda out, rows: None)
    cfg = L.PRESETS["cpu"]
    L.run(dataclasses.replace(cfg, env=("bsuite/catch",)), tmp_path, L.C.Timings())
    rates = L.learning_rates(cfg)
    assert cfg.large_batch_steps != cfg.num_steps  # else the check below could not tell the lengths apart
    assert calls == [("dqn", cfg.batch_size, cfg.num_steps, rates), ("bc", cfg.batch_size, cfg.num_steps, rates),
                     ("dqn", cfg.large_batch_size, cfg.large_batch_steps, sorted(rates[::cfg.large_batch_stride]))]

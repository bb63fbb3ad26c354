"""Every claim of exp_interventions.py on synthetic tables built to hold, to fail, and to come out
inconclusive or not testable."""

import numpy as np
import pytest

import exp_interventions as E
from synthetic import metrics, noise, rows_for

CFG = E.PRESETS["cpu"]
FS = E.factors(CFG)
DESIGN = E.fractional_factorial(6, E.GENERATORS["full"]).astype(bool)  # 64 runs: effects well estimated
ENV = "minatar/breakout"
SEEDS = range(5)
ALT = lambda a, b: (lambda s: a if s % 2 else b)


def verdicts(claim):
    return [e.verdict for e in claim.evidence]


def design_runs(srank, ret=None):
    """Runs of the full factorial with srank(treated bits, run index) and a normalised return."""
    n = len(DESIGN)
    s = np.asarray([srank(t, i) for i, t in enumerate(DESIGN)], float)
    r = np.asarray([ret(t, i, s[i]) for i, t in enumerate(DESIGN)], float) if ret else np.zeros(n)
    return E.Runs(env=np.full(n, ENV), treated=DESIGN, srank=s, ret=r, norm_ret=r)


@pytest.mark.parametrize("effects, expected", [
    ((40, -10, 3, 0, 5, 2), "held"),  # tanh raises srank the most
    ((-20, -10, 3, 0, 5, 2), "not held"),  # tanh lowers it
    ((8, 9, 3, 0, 5, 2), "inconclusive"),  # the learning rate's effect is as large
    ((40, -60, 3, 0, 5, 2), "not held"),  # the learning rate's effect is larger in size (Table 3 ranks |ATE|)
])
def test_activation_largest(effects, expected):
    runs = design_runs(lambda t, i: 50 + np.dot(t, effects) + 4 * noise("a", i))
    assert verdicts(E.claim_activation_largest(runs, CFG)) == [expected]


def test_activation_largest_not_testable_when_an_effect_is_undefined():
    """Every run with the second intervention diverged: its effect cannot be estimated, so it cannot be out-ranked."""
    runs = design_runs(lambda t, i: np.nan if t[1] else 50 + 40 * t[0] + 4 * noise("a", i))
    assert verdicts(E.claim_activation_largest(runs, CFG)) == ["not testable here"]


@pytest.mark.parametrize("slope, expected", [(1.0, "held"), (-1.0, "not held"), (0.0, "inconclusive")])
def test_relu_threshold(slope, expected):
    # Among the ReLU runs, return follows srank by ``slope`` (with noise); tanh runs are noise.
    runs = design_runs(lambda t, i: 30 + 20 * noise("s", i),
                       lambda t, i, s: (0 if t[0] else slope * s / 30) + 0.05 * noise("r", i))
    assert verdicts(E.claim_relu_threshold(runs, CFG)) == [expected]


def test_relu_threshold_not_testable_without_a_normalisation():
    runs = design_runs(lambda t, i: 30 + 20 * noise("s", i), lambda t, i, s: np.nan)
    assert verdicts(E.claim_relu_threshold(runs, CFG)) == ["not testable here"]


@pytest.mark.parametrize("relu, tanh, expected", [(1.0, 0.0, "held"), (0.0, 1.0, "not held"), (0.3, 0.3, "inconclusive")])
def test_relu_correlation(relu, tanh, expected):
    runs = design_runs(lambda t, i: 30 + 20 * noise("s", i),
                       lambda t, i, s: (tanh if t[0] else relu) * s / 30 + 0.3 * noise("r", i))
    assert verdicts(E.claim_relu_correlation(runs)) == [expected]


@pytest.mark.parametrize("paradox, expected", [(False, "held"), (True, "not held")])
def test_simpson(paradox, expected):
    if paradox:  # within each learning rate, return rises with srank; the high rate shifts srank up, return down
        runs = design_runs(lambda t, i: 10 + 5 * noise("s", i) + (40 if t[1] else 0),
                           lambda t, i, s: (s - (40 if t[1] else 0)) / 10 - (8 if t[1] else 0))
    else:
        runs = design_runs(lambda t, i: 30 + 20 * noise("s", i), lambda t, i, s: s / 30 + 0.1 * noise("r", i))
    assert verdicts(E.claim_simpson(runs, CFG)) == [expected]


def test_simpson_not_testable_without_a_normalisation():
    runs = design_runs(lambda t, i: 30.0, lambda t, i, s: np.nan)
    assert verdicts(E.claim_simpson(runs, CFG)) == ["not testable here"]


def design_metrics(point):
    """metrics.csv of the design: point(settings, step, run) -> (srank, return) at each evaluation."""
    rows = []
    for i, t in enumerate(DESIGN):
        setting = E.levels(FS, t)
        columns = {"study": "design", "env": ENV, "agent": "dqn", "seed": 0, **setting}
        rows += rows_for(columns, {"srank": lambda step, s=setting, i=i: point(s, step, i)[0],
                                   "return": lambda step, s=setting, i=i: point(s, step, i)[1]},
                         steps=range(0, 10001, 2500))
    return metrics(rows)


def narrow(setting):
    return setting["activation"] == "relu" and setting["lr"] == CFG.learning_rate and \
        setting["target_period"] == CFG.target_update_period


@pytest.mark.parametrize("narrow_slope, broad_slope, expected", [
    (1.0, 0.0, "held"),  # correlated in the narrow setting only
    (0.0, 1.0, "not held"),  # correlated everywhere but the narrow setting
    (0.5, 0.5, "inconclusive"),  # the same everywhere
])
def test_narrow_correlation(narrow_slope, broad_slope, expected):
    def point(setting, step, i):
        srank = 20 + 10 * noise("s", i, step)
        slope = narrow_slope if narrow(setting) else broad_slope
        return srank, slope * srank + 5 * noise("r", i, step)

    assert verdicts(E.claim_narrow_correlation(design_metrics(point), CFG)) == [expected]


def sweep_metrics(study, fn, variants, env=ENV):
    """fn(variant, seed) -> {metric: value}; variants: [(curl_weight, sam_rho)]."""
    rows = []
    for w, rho in variants:
        for seed in SEEDS:
            columns = {"study": study, "env": env, "agent": "dqn", "seed": seed, "activation": "relu",
                       "curl_weight": w, "sam_rho": rho}
            rows += rows_for(columns, {k: (lambda t, v=v: v) for k, v in fn((w, rho), seed).items()})
    return metrics(rows)


WEIGHTS = [(0.0, 0.0), (1e-3, 0.0), (0.1, 0.0), (1.0, 0.0)]


@pytest.mark.parametrize("metric", ["srank", "return"])
@pytest.mark.parametrize("large, expected_rank", [(lambda s: 90.0, "held"), (lambda s: 10.0, "not held"),
                                                  (ALT(90.0, 10.0), "inconclusive")])
def test_curl(metric, large, expected_rank):
    m = sweep_metrics("curl_sweep", lambda v, s: {metric: large(s) if v[0] == 1.0 else 50.0,
                                                  "return" if metric == "srank" else "srank": 1.0}, WEIGHTS)
    flipped = {"held": "not held", "not held": "held", "inconclusive": "inconclusive"}
    expected = expected_rank if metric == "srank" else flipped[expected_rank]  # return: the claim is a fall
    assert verdicts(E.claim_curl(m, metric)) == [expected]


@pytest.mark.parametrize("study", ["sam_pair", "memory"])
@pytest.mark.parametrize("sam, expected", [(lambda s: 50.0 + 0.5 * noise(s), "held"), (lambda s: 80.0, "not held"),
                                           (ALT(62.0, 38.0), "inconclusive")])
def test_sam(study, sam, expected):
    m = sweep_metrics(study, lambda v, s: {"srank": sam(s) if v[1] else 50.0, "return": 1.0}, [(0.0, 0.0), (0.0, 0.05)],
                      env="bsuite/memory_len" if study == "memory" else ENV)
    assert verdicts(E.claim_sam(m, study)) == [expected]


# Per seed, an order of 4 (5) variants whose Spearman rho with their own order is small: 0.2, -0.2, 0,
# 0.2, -0.2 (0.1, -0.1, 0, 0.1, -0.1), so the 95% t interval of the mean rho lies well inside +-0.5.
NO_TREND_4 = [(0, 3, 2, 1), (1, 2, 3, 0), (1, 3, 0, 2), (0, 3, 2, 1), (1, 2, 3, 0)]
NO_TREND_5 = [(0, 3, 4, 2, 1), (1, 2, 4, 3, 0), (0, 4, 3, 2, 1), (0, 3, 4, 2, 1), (1, 2, 4, 3, 0)]


@pytest.mark.parametrize("trend, expected", [
    (lambda k, s: 0.01 * NO_TREND_4[s][k], "held"),
    (lambda k, s: float(k), "not held"),  # return rises with the weight in every seed
    (lambda k, s: float(k) * (1 if s % 3 else -1), "inconclusive"),
])
def test_memory_curl(trend, expected):
    m = sweep_metrics("memory", lambda v, s: {"return": trend([w for w, _ in WEIGHTS].index(v[0]), s), "srank": 1.0},
                      WEIGHTS, env="bsuite/memory_len")
    assert verdicts(E.claim_memory_curl(m)) == [expected]


@pytest.mark.parametrize("ret, expected", [
    (lambda k, s: float(NO_TREND_5[s][k]), "held"),  # no strong correlation in any seed
    (lambda k, s: 4.0 * k, "not held"),  # return follows srank in every seed
    (lambda k, s: 4.0 * k * (1 if s % 2 else -1), "inconclusive"),
])
def test_memory_rank_return(ret, expected):
    variants = WEIGHTS + [(0.0, 0.05)]

    def fn(v, s):
        k = variants.index(v)
        return {"srank": 10.0 + 4 * k, "return": ret(k, s)}

    assert verdicts(E.claim_memory_rank_return(sweep_metrics("memory", fn, variants, env="bsuite/memory_len"))) == \
        [expected]


def test_memory_claims_say_why_a_solved_task_is_not_testable():
    """Every variant returning the same (the long run solves the task: return 1 everywhere) leaves
    Spearman's rho undefined: not testable, and the note says why."""
    variants = WEIGHTS + [(0.0, 0.05)]
    m = sweep_metrics("memory", lambda v, s: {"return": 1.0, "srank": 10.0 + variants.index(v) + s}, variants,
                      env="bsuite/memory_len")
    for claim in (E.claim_memory_curl(m), E.claim_memory_rank_return(m)):
        assert verdicts(claim) == ["not testable here"] and "returned the same" in claim.evidence[0].note

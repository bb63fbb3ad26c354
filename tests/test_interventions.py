"""Unit tests of exp_interventions.py: the factorial design, the treatment-effect statistics and the
permutation test against hand-computed cases, the config labels, and the CURL loss's gradients."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common as C
import exp_interventions as E

CFG = E.PRESETS["smoke"]


def test_average_treatment_effect_hand_computed():
    # treated [3, 5] (mean 4, var 2), control [1, 2] (mean 1.5, var 0.5): 2.5 +- sqrt(2/2 + 0.5/2).
    ate, se = E.average_treatment_effect([1, 2, 3, 5], [0, 0, 1, 1])
    assert ate == pytest.approx(2.5) and se == pytest.approx(math.sqrt(1.25))
    # A diverged (NaN) run is left out.
    assert E.average_treatment_effect([1, 2, np.nan, 3, 5], [0, 0, 1, 1, 1]) == pytest.approx((ate, se))
    # One run in a group: an effect but no error; an empty group: neither.
    ate1, se1 = E.average_treatment_effect([1, 2, 7], [0, 0, 1])
    assert ate1 == pytest.approx(5.5) and math.isnan(se1)
    assert all(math.isnan(v) for v in E.average_treatment_effect([1, 2], [0, 0]))


def test_interaction_effect_hand_computed():
    # Cell means: both 11, a only 5, b only 3, neither 2 -> 11 - 5 - 3 + 2 = 5; every cell's variance
    # is 2 with 2 runs, so the error is sqrt(4 * 2 / 2) = 2.
    y = [10, 12, 4, 6, 2, 4, 1, 3]
    a = [1, 1, 1, 1, 0, 0, 0, 0]
    b = [1, 1, 0, 0, 1, 1, 0, 0]
    inter, se = E.interaction_effect(y, a, b)
    assert inter == pytest.approx(5.0) and se == pytest.approx(2.0)
    # Additive data have no interaction.
    additive = [3 * i + 2 * j + k for i, j, k in itertools.product((1, 0), (1, 0), (0.0, 0.5))]
    assert E.interaction_effect(additive, a, b)[0] == pytest.approx(0.0)


def test_permutation_pvalue_exact_hand_computed():
    rng = np.random.default_rng(0)
    # The 6 ways to call 2 of [1, 2, 3, 4] high give differences 2, 1, 0, 0, -1, -2.
    assert E.permutation_pvalue([1, 2, 3, 4], [0, 0, 1, 1], 100, rng) == pytest.approx(1 / 6)
    assert E.permutation_pvalue([1, 2, 3, 4], [1, 0, 0, 1], 100, rng) == pytest.approx(4 / 6)  # ties count
    assert E.permutation_pvalue([1, 2, 3, 4], [1, 1, 0, 0], 100, rng) == pytest.approx(1.0)
    assert math.isnan(E.permutation_pvalue([1, 2, 3], [1, 1, 1], 100, rng))


def test_permutation_pvalue_monte_carlo_agrees_with_exact():
    rng = np.random.default_rng(1)
    y = rng.normal(size=12)
    high = np.zeros(12, bool)
    high[[0, 3, 4, 7, 8, 11]] = True  # C(12, 6) = 924 relabellings
    exact = E.permutation_pvalue(y, high, 1_000, np.random.default_rng(2))
    sampled = E.permutation_pvalue(y, high, 900, np.random.default_rng(2))  # fewer allowed: Monte Carlo
    assert abs(exact - sampled) < 0.05
    # The most extreme labelling of 20 runs is beaten by none of 2,000 random ones: p = 1 / 2001.
    y = np.arange(20.0)
    assert E.permutation_pvalue(y, y >= 10, 2_000, np.random.default_rng(3)) == pytest.approx(1 / 2_001)


def test_rank_threshold_effect_hand_computed():
    # The median of srank [1, 2, 3, 4] is 2.5: the two high-rank runs return 1, the others 0.
    out = E.rank_threshold_effect([1, 2, 3, 4], [0, 0, 1, 1], 0.5, 100, np.random.default_rng(0))
    assert out["ate"] == pytest.approx(1.0) and out["p"] == pytest.approx(1 / 6)
    assert (out["n_high"], out["n"]) == (2, 4)


@pytest.mark.parametrize("design, runs", [("full", 64), ("half", 32), ("quarter", 16)])
def test_fractional_factorial_is_balanced_and_keeps_main_effects_clear(design, runs):
    x = E.fractional_factorial(6, E.GENERATORS[design])
    assert x.shape == (runs, 6) and len({tuple(r) for r in x}) == runs
    s = 2 * x - 1
    np.testing.assert_array_equal(s.T @ s, runs * np.eye(6))  # balanced, main effects orthogonal
    for i in range(6):  # resolution IV or more: no main effect aliased with a two-factor interaction
        for j, k in itertools.combinations(range(6), 2):
            assert s[:, i] @ (s[:, j] * s[:, k]) == 0
    aliased = any(E.interaction_aliases(x).values())
    assert aliased == (design == "quarter")


def test_quarter_fraction_generators():
    x = E.fractional_factorial(6, E.GENERATORS["quarter"])
    s = 2 * x - 1
    np.testing.assert_array_equal(s[:, 4], s[:, 0] * s[:, 1] * s[:, 2])  # E = ABC
    np.testing.assert_array_equal(s[:, 5], s[:, 1] * s[:, 2] * s[:, 3])  # F = BCD
    assert E.interaction_aliases(x)[(0, 1)] == [(2, 4)]  # AB = CE


def test_run_labels_round_trip_and_foreign_labels_are_clear_errors():
    fs = E.factors(CFG)
    for bits in E.fractional_factorial(6, E.GENERATORS["quarter"]).astype(bool):
        np.testing.assert_array_equal(E.treated_bits(fs, E.run_label(E.run_levels(fs, bits))), bits)
    assert E.run_label(E.run_levels(fs, np.zeros(6, bool))) == "act=relu lr=0.0003 target=100 sam=0 curl=0 data=1"
    with pytest.raises(ValueError, match="lr levels"):
        E.treated_bits(fs, "act=relu lr=0.1 target=100 sam=0 curl=0 data=1")


def test_episode_returns_of_complete_episodes():
    ds = C.make_dataset(np.zeros((6, 2)), np.zeros(6), [1, 0, 2, 3, 1, 5], [0, 0, 1, 0, 1, 0], np.arange(5),
                        num_actions=2, history=1)
    np.testing.assert_allclose(E.episode_returns(ds), [3.0, 4.0])  # the unfinished last one is left out


def test_curl_logits_hand_computed():
    anchors = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    keys = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    w = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    # (anchor_i W) . key_j: anchor 0 -> [1, 0], anchor 1 -> [0, 2]
    np.testing.assert_allclose(E.curl_logits(anchors, keys, w), [[1.0, 3.0], [4.0, 8.0]])


def test_curl_loss_trains_the_online_network_and_its_bilinear_map_only():
    net = E.CURLNetwork(C.MLP(3, (8,)))
    obs = jax.random.uniform(jax.random.key(0), (6, 10, 5))
    online, target = net.init(jax.random.key(1), obs), net.init(jax.random.key(2), obs)
    batch = C.Batch(obs, jnp.zeros(6, jnp.int32), jnp.zeros(6), jnp.ones(6), obs, jnp.zeros(6, jnp.int32), jnp.zeros(6))
    loss = E.curl_loss(net, 1, (1, 2))

    def total(p, t):
        return loss(p, net.apply(p, obs)[1], t, batch, jax.random.key(3))

    value = total(online, target)
    assert np.isfinite(value) and value > 0
    g_online, g_target = jax.grad(total, argnums=(0, 1))(online, target)
    assert float(jnp.abs(g_online["params"]["curl_bilinear"]).sum()) > 0
    assert float(jnp.abs(g_online["params"]["base"]["hidden_0"]["kernel"]).sum()) > 0
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree_util.tree_leaves(g_target))

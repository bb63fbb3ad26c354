"""Unit tests of exp_interventions.py: the factorial design, the treatment-effect statistics and the
permutation test against hand-computed cases, the config labels, and the CURL loss's gradients."""

import dataclasses
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


def test_rank_threshold_effect_with_ties_at_the_threshold():
    # Five of eight runs share the top srank, so none is strictly above the 0.75-quantile (20).
    out = E.rank_threshold_effect([10, 12, 12, 15, 20, 20, 20, 20], np.arange(8.0), 0.75, 100,
                                  np.random.default_rng(0))
    assert out["n_high"] == 0 and np.isnan(out["ate"]) and np.isnan(out["p"])


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


def test_levels_round_trip_and_foreign_settings_are_clear_errors():
    fs = E.factors(CFG)
    for bits in E.fractional_factorial(6, E.GENERATORS["quarter"]).astype(bool):
        np.testing.assert_array_equal(E.treated_bits(fs, E.levels(fs, bits)), bits)
    assert E.levels(fs, np.zeros(6, bool)) == {"activation": "relu", "lr": 3e-4, "target_period": 100, "sam_rho": 0.0,
                                               "curl_weight": 0.0, "fraction": 1.0}
    with pytest.raises(ValueError, match="lr = 0.1"):
        E.treated_bits(fs, E.levels(fs, np.zeros(6, bool)) | {"lr": 0.1})


def test_memory_evaluation_period_divides_the_memory_runs_and_is_the_game_runs_one_below_paper():
    for name in ("smoke", "cpu", "long"):  # what their reference runs used, and runs before the setting
        assert E.PRESETS[name].memory_eval_every == 0
        assert E.PRESETS[name].memory_eval_period == E.PRESETS[name].eval_every
    paper = E.PRESETS["paper"]
    assert paper.memory_steps % paper.memory_eval_period == 0 and paper.memory_eval_period < paper.eval_every
    dataclasses.replace(CFG, memory_steps=800, memory_eval_every=400).check()
    for bad in ({"memory_eval_every": 300}, {"memory_eval_every": -200}, {"memory_steps": 300},
                {"memory_steps": 300, "memory_eval_every": 100}):
        with pytest.raises(ValueError, match="memory"):
            dataclasses.replace(CFG, **bad).check()
    dataclasses.replace(CFG, studies=("design",), memory_steps=300).check()  # no memory study, no constraint


def test_episode_returns_of_complete_episodes():
    # Two collection streams back to back. Stream 1: an episode (1, 0, 2), then an unfinished tail
    # (3, 1) whose last row is not sampleable. Stream 2: an episode (5, 1), a truncated step (2,
    # not sampleable), then an episode (4, 4). Only the three complete episodes count.
    reward = [1, 0, 2, 3, 1, 5, 1, 2, 4, 4]
    terminal = [0, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    valid = [0, 1, 2, 3, 5, 6, 8, 9]
    ds = C.make_dataset(np.zeros((10, 2)), np.zeros(10), reward, terminal, valid, num_actions=2, history=1)
    np.testing.assert_allclose(C.episode_returns(ds), [3.0, 6.0, 8.0])


def test_normalised_return_ends_and_an_undefined_scale():
    np.testing.assert_allclose(E.normalise(np.array([0.5, 1.5, 2.5]), 0.5, 1.5), [0.0, 1.0, 2.0])
    assert np.isnan(E.normalise(np.array([1.0]), 2.0, 1.0)).all()  # data below random: no scale


def test_joint_effect_of_a_pair_is_the_sum_of_its_single_effects_in_the_balanced_design():
    design = E.fractional_factorial(6, E.GENERATORS[CFG.design]).astype(bool)
    y = np.random.default_rng(0).normal(size=len(design)) * 10
    runs = E.Runs(env=np.full(len(design), "bsuite/catch"), treated=design, srank=y, ret=y, norm_ret=y)
    single = {E.SHORT[f.key]: r["ate"] for f, r in zip(E.factors(CFG), E.effect_rows(runs, CFG))}
    for r in E.pair_rows(runs, CFG):
        assert r["joint_ate"] == pytest.approx(single[r["a"]] + single[r["b"]])


def test_member_settings_follow_the_design_row():
    fs = E.factors(CFG)
    treated = np.array([1, 1, 1, 1, 1, 1], bool)
    m = E.member(CFG, fs, treated, seed=3, num_transitions=2_000)
    assert m.columns == {k: v for k, v in E.levels(fs, treated).items() if k != "activation"}
    assert (m.seed, m.learning_rate, m.target_update_period, m.settings) == (
        3, CFG.treatment_learning_rate, CFG.treatment_target_update_period,
        {"sam_rho": CFG.sam_rho, "curl_weight": CFG.curl_weight})
    assert m.data_size == max(CFG.batch_size, round(CFG.data_fraction * 2_000))
    sweep = E.member(CFG, fs, np.zeros(6, bool), seed=0, num_transitions=2_000, curl_weight=0.5)
    assert sweep.settings["curl_weight"] == 0.5 == sweep.columns["curl_weight"] and sweep.data_size == 2_000


def test_sam_gradient_hand_computed():
    # L = 0.5 x'Ax with A = diag(1, 4) at x = (1, 1): g = (1, 4); SAM takes the gradient at
    # x + rho g / |g| = x + rho (1, 4) / sqrt(17).
    loss = lambda p: (0.5 * jnp.sum(jnp.array([1.0, 4.0]) * p["w"] ** 2), {})
    x = {"w": jnp.array([1.0, 1.0])}
    (value, _), got = E.sam_gradient(loss, x, {"sam_rho": 0.5})
    step = 0.5 / np.sqrt(17.0)
    assert float(value) == pytest.approx(2.5)
    np.testing.assert_allclose(got["w"], [1.0 + step, 4.0 * (1.0 + 4.0 * step)], rtol=1e-6)
    np.testing.assert_allclose(E.sam_gradient(loss, x, {"sam_rho": 0.0})[1]["w"], [1.0, 4.0])


def test_sam_at_radius_zero_is_plain_training_and_a_radius_changes_it():
    ds = C.make_dataset(np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32), np.arange(64) % 3,
                        np.ones(64), (np.arange(64) % 8 == 7), np.arange(63), 3, 1)
    cfg = C.TrainConfig(num_steps=100, chunk_steps=50, batch_size=16, optimizer="adam", target_update_period=20,
                        probe_size=64, eval_every=0)
    train = lambda rule, rhos: C.train_offline(C.MLP(3, (16,)), ds, C.DoubleDQN(0.99), [
        C.Member(0, 1e-3, settings={"sam_rho": r}) for r in rhos], cfg, gradient=rule, progress=False)
    plain, sam = train(C.plain_gradient, [0.0]), train(E.sam_gradient, [0.0, 0.05])
    leaf = lambda r, i: jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[i], r.state.params))[0]
    np.testing.assert_allclose(leaf(sam, 0), leaf(plain, 0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(leaf(sam, 1), leaf(plain, 0), atol=1e-4)


def test_curl_logits_hand_computed():
    anchors = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    keys = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    w = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    # (anchor_i W) . key_j: anchor 0 -> [1, 0], anchor 1 -> [0, 2]; each row minus its maximum.
    np.testing.assert_allclose(E.curl_logits(anchors, keys, w), [[-2.0, 0.0], [-4.0, 0.0]])


def curl_setup(base=None, obs_shape=(6, 10, 5)):
    net = E.CURLNetwork(base or C.MLP(3, (8,)), latent_dim=4)
    obs = jax.random.uniform(jax.random.key(0), obs_shape)
    online = net.init(jax.random.key(1), obs)
    target = net.init(jax.random.key(2), obs)
    n = obs.shape[0]
    batch = C.Batch(obs, jnp.zeros(n, jnp.int32), jnp.zeros(n), jnp.ones(n), obs, jnp.zeros(n, jnp.int32), jnp.zeros(n))
    return net, obs, online, target, batch


def test_curl_head_is_beside_the_q_network():
    net, obs, online, _, _ = curl_setup()
    q, features = net.apply(online, obs)
    base_q, base_features = C.MLP(3, (8,)).apply({"params": online["params"]["base"]}, obs)
    np.testing.assert_array_equal(q, base_q)  # the head does not feed the Q values
    latent = net.apply(online, obs, method="latent")
    assert latent.shape == (6, 4) and float(jnp.max(jnp.abs(latent))) <= 1.0  # tanh of a LayerNorm
    assert online["params"]["curl_bilinear"].shape == (4, 4)


def test_curl_loss_trains_the_encoder_head_and_bilinear_map_and_moves_the_momentum_encoder():
    net, obs, online, target, batch = curl_setup()
    td = C.DoubleDQN(0.99)
    loss = E.TDWithCURL(td, E.RandomShift(1, (1, 2)), tau=0.05)
    state = loss.init_state(online)
    key = jax.random.key(3)

    def total(p, t, weight=1.0, loss=loss):
        return loss(net.apply, p, t, batch, {"curl_weight": weight}, key, state)

    td_only = td(net.apply, online, target, batch, {}, key)[0]
    assert float(total(online, target, 0.0)[0]) == pytest.approx(float(td_only))  # weight 0: the TD loss alone
    curl = total(online, target)[0] - td_only
    assert np.isfinite(curl) and curl > 0
    # The two views are shifted copies: without the shift (pad 0) the loss is another number.
    assert not np.isclose(total(online, target, loss=E.TDWithCURL(td, E.RandomShift(0, (1, 2)), 0.05))[0] - td_only,
                          curl)
    grads = jax.grad(lambda p: total(p, target)[0] - td(net.apply, p, target, batch, {}, key)[0])(online)
    for name in ("curl_bilinear",):
        assert float(jnp.abs(grads["params"][name]).sum()) > 0
    assert float(jnp.abs(grads["params"]["projection"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["params"]["base"]["hidden_0"]["kernel"]).sum()) > 0  # the encoder
    assert float(jnp.abs(grads["params"]["base"]["head"]["kernel"]).sum()) == 0  # not the Q head
    # The momentum encoder moves tau of the way to the online parameters, and gets no gradient.
    moved = total(online, target)[1]["loss_state"]
    leaf = lambda t: jax.tree_util.tree_leaves(t)[0]
    np.testing.assert_allclose(leaf(moved), leaf(state), rtol=1e-6)  # it starts as a copy: no move
    shifted = jax.tree_util.tree_map(lambda x: x + 1.0, state)
    moved = loss(net.apply, online, target, batch, {"curl_weight": 1.0}, key, shifted)[1]["loss_state"]
    np.testing.assert_allclose(leaf(moved), leaf(shifted) - 0.05, rtol=1e-5, atol=1e-6)


def test_curl_on_the_lstm_encodes_its_outputs_averaged_over_time():
    net, obs, online, _, _ = curl_setup(C.RecurrentQNetwork(2, 8), obs_shape=(6, 5, 3))
    base = {"params": online["params"]["base"]}
    outputs = C.RecurrentQNetwork(2, 8).apply(base, obs, method="outputs")
    np.testing.assert_allclose(C.RecurrentQNetwork(2, 8).apply(base, obs, method="encode"), outputs.mean(axis=1),
                               rtol=1e-6)
    assert net.apply(online, obs, method="latent").shape == (6, 4)

"""Unit tests of common.py: metrics and losses against hand-computed values, the trainer's
guarantees (seeds, traced learning rates, resume, divergence), datasets and their formats."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common as C
from bench import compiled_flops
from synthetic import write_dqn_replay

# ---------------------------------------------------------------------------------------------
# Rank metrics
# ---------------------------------------------------------------------------------------------


def paper_stub_rank(feature_matrix, rank_delta=0.01):
    """The paper's Appendix A.11 code, verbatim in numpy, as the reference."""
    sing_values = np.linalg.svd(feature_matrix, compute_uv=False)
    cumsum = np.cumsum(sing_values)
    nuclear_norm = np.sum(sing_values)
    approximate_rank_threshold = 1.0 - rank_delta
    threshold_crossed = cumsum >= approximate_rank_threshold * nuclear_norm
    return sing_values.shape[0] - np.sum(threshold_crossed) + 1


@pytest.mark.parametrize(
    "matrix, expected",
    [
        (np.eye(4), 4),  # equal singular values: all needed
        (np.diag([10.0, 1.0, 0.0, 0.0]), 2),  # 10 < 0.99 * 11 <= 11
        (np.diag([100.0, 1.0, 0.0]), 1),  # 100 >= 0.99 * 101
        (np.zeros((5, 3)), 1),  # the stub's edge case: an all-zero matrix has rank 1
        (np.outer(np.arange(1, 6), np.ones(4)), 1),  # rank one
    ],
)
def test_effective_rank_hand_cases(matrix, expected):
    assert int(C.effective_rank(jnp.asarray(matrix, jnp.float32))) == expected
    assert paper_stub_rank(matrix) == expected


def test_effective_rank_matches_paper_stub_on_random_matrices():
    rng = np.random.default_rng(0)
    for delta in (0.01, 0.1):
        for shape in ((512, 64), (32, 128), (64, 64)):
            # Low-rank-ish features with a decaying spectrum, so the threshold falls mid-spectrum.
            x = rng.normal(size=shape) @ np.diag(np.exp(-np.arange(shape[1]) / 8.0))
            assert int(C.effective_rank(jnp.asarray(x, jnp.float32), delta)) == paper_stub_rank(x, delta)


def test_effective_rank_jits_and_maps_over_members():
    x = jnp.stack([jnp.eye(8), jnp.zeros((8, 8)), jnp.diag(jnp.array([1.0] + [0.0] * 7))])
    assert jax.jit(C.per_member(C.effective_rank))(x).tolist() == [8, 1, 1]
    assert jax.jit(jax.vmap(C.effective_rank))(x).tolist() == [8, 1, 1]  # the same numbers, batched


def test_dead_units_and_dormant_fraction():
    features = jnp.array([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 2.0], [0.0, 3.0, 0.001, 2.0]])
    assert int(C.dead_units(features)) == 1  # column 2 fires once (0.001), so only column 0 is dead
    assert int(C.dead_units(features.at[2, 2].set(0.0))) == 2
    # Unit scores: mean |a| = [0, 4/3, 1/3000, 2]; layer mean = (4/3 + 1/3000 + 2) / 4 ~ 0.8334.
    # Normalised: [0, 1.6, 0.0004, 2.4]: two units <= 0.025.
    assert float(C.dormant_fraction(features, 0.025)) == pytest.approx(0.5)
    assert float(C.dormant_fraction(jnp.zeros((4, 3)))) == 1.0


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def test_td_errors_hand_computed():
    q_tm1 = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    a_tm1 = jnp.array([1, 0])
    r_t = jnp.array([1.0, -1.0])
    discount_t = jnp.array([0.5, 0.0])
    q_t_value = jnp.array([[10.0, 20.0], [7.0, 9.0]])
    q_t_selector = jnp.array([[5.0, 1.0], [0.0, 1.0]])
    # Row 0: a* = 0, target = 1 + 0.5 * 10 = 6, error = 6 - 2 = 4. Row 1: terminal, -1 - 0.5.
    np.testing.assert_allclose(C.double_q_td_error(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector), [4.0, -1.5])
    # SARSA on the logged next action: row 0 target = 1 + 0.5 * q_t[1] = 11, error 9.
    np.testing.assert_allclose(C.sarsa_td_error(q_tm1, a_tm1, r_t, discount_t, q_t_value, jnp.array([1, 0])), [9.0, -1.5])
    np.testing.assert_allclose(C.mc_return_error(q_tm1, a_tm1, jnp.array([5.0, 0.0])), [3.0, -0.5])
    np.testing.assert_allclose(C.huber(jnp.array([0.5, -2.0, 3.0])), [0.125, 1.5, 2.5])


def test_bc_loss_hand_computed():
    assert float(C.bc_loss(jnp.zeros((3, 2)), jnp.array([0, 1, 0]))) == pytest.approx(math.log(2.0))
    logits = jnp.array([[math.log(3.0), 0.0]])  # p = [3/4, 1/4]
    assert float(C.bc_loss(logits, jnp.array([1]))) == pytest.approx(math.log(4.0))


def _tiny_batch(key, n=16, obs_dim=5, num_actions=3):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return C.Batch(obs=jax.random.normal(k1, (n, obs_dim)), action=jax.random.randint(k2, (n,), 0, num_actions),
                   reward=jax.random.normal(k3, (n,)), discount=jnp.ones(n), next_obs=jax.random.normal(k4, (n, obs_dim)),
                   next_action=jnp.zeros(n, jnp.int32), mc_return=jnp.ones(n))


@pytest.mark.parametrize("loss", [C.DoubleDQN(0.99), C.BVE(0.99)])
def test_gradients_reach_only_the_online_network(loss):
    net = C.MLP(3, (8,))
    k_online, k_target, k_batch = jax.random.split(jax.random.key(0), 3)
    batch = _tiny_batch(k_batch)
    online, target = net.init(k_online, batch.obs), net.init(k_target, batch.obs)
    g_online, g_target = jax.grad(lambda p, t: loss(net.apply, p, t, batch, {}, None)[0], argnums=(0, 1))(online, target)
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree_util.tree_leaves(g_target))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(g_online)) > 0


def test_double_dqn_gradient_runs_no_backward_pass_over_next_states():
    """The online net's pick of a' is gradient-free, so its pass on s' must not be differentiated.
    XLA's FLOP count of the gradient, in forward passes of the net on s: 3.7 (s forward and
    backward, without the input's gradient; two passes on s'); differentiating one online pass on
    [s, s'] instead counts 5.3 (the backward runs over s' too, on zero cotangents)."""
    net = C.MLP(3, (256, 256))
    batch = _tiny_batch(jax.random.key(5), n=64, obs_dim=128)
    params, target = net.init(jax.random.key(6), batch.obs), net.init(jax.random.key(7), batch.obs)

    def loss(p):
        return C.DoubleDQN(0.99)(net.apply, p, target, batch, {}, None)[0]

    forward = compiled_flops(jax.jit(lambda p, o: net.apply(p, o)[0]), params, batch.obs)
    grad = compiled_flops(jax.jit(jax.grad(loss)), params)
    assert grad <= 4.5 * forward, grad / forward

    # Same gradient as differentiating one online pass on [s, s'] with a' picked under stop_gradient.
    def one_pass(p):
        q_both, _ = net.apply(p, jnp.concatenate([batch.obs, batch.next_obs]))
        q_tm1, q_selector = jnp.split(q_both, 2)
        td = C.double_q_td_error(q_tm1, batch.action, batch.reward, 0.99 * batch.discount,
                                 net.apply(target, batch.next_obs)[0], jax.lax.stop_gradient(q_selector))
        return jnp.mean(C.huber(td))

    ours, reference = (jax.tree_util.tree_leaves(jax.grad(f)(params)) for f in (loss, one_pass))
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_loss_objects_hand_computed():
    """Each loss object computes its error with the pure functions above, as documented."""
    net = C.MLP(3, (8,))
    batch = _tiny_batch(jax.random.key(2))
    params, target = net.init(jax.random.key(3), batch.obs), net.init(jax.random.key(4), batch.obs)
    q, _ = net.apply(params, batch.obs)
    q_next, _ = net.apply(params, batch.next_obs)
    q_target, _ = net.apply(target, batch.next_obs)
    td = C.double_q_td_error(q, batch.action, batch.reward, 0.9 * batch.discount, q_target, q_next)
    value, aux = C.DoubleDQN(0.9)(net.apply, params, target, batch, {}, None)
    assert float(value) == pytest.approx(float(jnp.mean(C.huber(td))), rel=1e-5)
    assert aux["features"].shape == (16, 8)
    clipped = batch._replace(reward=jnp.clip(batch.reward, -1, 1))
    assert float(C.DoubleDQN(0.9, clip_rewards=True)(net.apply, params, target, batch, {}, None)[0]) == \
        pytest.approx(float(C.DoubleDQN(0.9)(net.apply, params, target, clipped, {}, None)[0]), rel=1e-6)
    mc = C.MonteCarlo()(net.apply, params, target, batch, {}, None)[0]
    assert float(mc) == pytest.approx(float(jnp.mean(C.huber(C.mc_return_error(q, batch.action, batch.mc_return)))),
                                      rel=1e-5)
    assert float(C.BehaviourCloning()(net.apply, params, target, batch, {}, None)[0]) == \
        pytest.approx(float(C.bc_loss(q, batch.action)), rel=1e-5)


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown activation"):
        C.activation_fn("sigmoidish")


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "net, obs_shape, feat",
    [
        (C.MLP(3, (64, 64)), (10, 5), 64),
        (C.MLP(3, (32, 16), "elu", "he"), (1, 6), 16),
        (C.MinAtarCNN(6), (10, 10, 4), 128),
        (C.NatureCNN(4), (4, 84, 84), 512),
        (C.RecurrentQNetwork(2, 16, "relu"), (7, 1, 3), 16),
    ],
)
def test_networks_return_q_and_penultimate_features(net, obs_shape, feat):
    obs = jnp.ones((2, *obs_shape), jnp.uint8 if isinstance(net, C.NatureCNN) else jnp.float32)
    params = net.init(jax.random.key(0), obs)
    q, features = net.apply(params, obs)
    assert q.shape == (2, net.num_actions) and features.shape == (2, feat)


def test_recurrent_cell_activation_changes_the_features():
    obs = jax.random.normal(jax.random.key(1), (4, 6, 3))
    tanh_net, relu_net = C.RecurrentQNetwork(2, 8, "tanh"), C.RecurrentQNetwork(2, 8, "relu")
    params = tanh_net.init(jax.random.key(0), obs)  # same parameter shapes for both
    _, f_tanh = tanh_net.apply(params, obs)
    _, f_relu = relu_net.apply(params, obs)
    assert float(jnp.max(jnp.abs(f_tanh))) < 1.0 and not np.allclose(f_tanh, f_relu)


def test_mlp_exposes_every_hidden_layer():
    net = C.MLP(2, (8, 8, 8))
    obs = jnp.ones((3, 4))
    _, state = net.apply(net.init(jax.random.key(0), obs), obs, mutable=["intermediates"])
    assert sorted(state["intermediates"]) == ["features_0", "features_1", "features_2"]


# ---------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------


def test_unknown_env_id_names_the_id_and_families():
    for bad in ("bsuite/catchh", "gym/CartPole-v1", "atari/NotAGame", "minatar"):
        with pytest.raises(ValueError) as e:
            C.make_env(bad, 1, 0)
        assert bad in str(e.value) and "bsuite/" in str(e.value) and "minatar/" in str(e.value) and "atari/" in str(e.value)


@pytest.mark.parametrize("env_id", ["bsuite/catch", "bsuite/cartpole", "bsuite/mountain_car", "bsuite/memory_len",
                                    "minatar/breakout", "minatar/asterix", "atari/Pong"])
def test_make_env_batched_interface(env_id):
    env = C.make_env(env_id, 3, seed=0)
    obs = env.reset()
    # reset and step return one dtype (MinAtar's own states are bool): a policy compiles once, and a
    # perturbation treats an episode's first observation as it treats the rest.
    assert obs.shape == (3, *env.obs_shape) and obs.dtype == env.obs_dtype and env.num_actions >= 2
    for _ in range(5):
        obs, reward, terminated, truncated = env.step(np.zeros(3, np.int32))
        assert obs.shape == (3, *env.obs_shape) and reward.shape == terminated.shape == truncated.shape == (3,)
        assert obs.dtype == env.obs_dtype
    env.close()


@pytest.mark.parametrize("game", sorted(C.BATCHED_BSUITE))
def test_batched_bsuite_is_bsuite_bit_for_bit(game):
    """The numpy-batched Catch, Cartpole and MountainCar against a loop over bsuite's own objects,
    with the same seeds and actions: every observation, reward and episode end is identical."""
    reference, batched = C.BsuiteEnv(game, 8, seed=3), C.make_env(f"bsuite/{game}", 8, seed=3)
    assert type(batched) is C.BATCHED_BSUITE[game]
    obs = reference.reset()
    np.testing.assert_array_equal(obs, batched.reset())
    rng, episodes = np.random.default_rng(0), 0
    for _ in range(2_500):
        # Mostly balancing actions on cartpole, so its episodes run long as well as short.
        sensible = np.where(obs[:, 0, 2] > 0, 2, 0) if game == "cartpole" else rng.integers(3, size=8)
        actions = np.where(rng.random(8) < 0.5, rng.integers(3, size=8), sensible)
        expected, got = reference.step(actions), batched.step(actions)
        for e, g in zip(expected, got):
            assert e.dtype == g.dtype and e.shape == g.shape
            np.testing.assert_array_equal(e, g)
        obs, episodes = expected[0], episodes + int(expected[2].sum() + expected[3].sum())
    assert episodes >= 16  # the comparison crossed many resets


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def _toy_dataset(history=1, rows=64, num_actions=3, seed=0):
    rng = np.random.default_rng(seed)
    terminal = (np.arange(rows) % 8 == 7).astype(np.float32)
    obs = rng.normal(size=(rows, 4)).astype(np.float32)
    action = rng.integers(num_actions, size=rows)
    reward = (action == (obs[:, 0] > 0)).astype(np.float32)  # a learnable reward
    return C.make_dataset(obs, action, reward, terminal, np.arange(rows - 1), num_actions, history)


def test_batch_gathers_next_rows_and_stacks_history_with_padding():
    # Two episodes of 3 steps with history 3: each is preceded by 2 zero rows.
    frames = np.array([0, 0, 1, 2, 3, 0, 0, 4, 5, 6], np.float32)[:, None]
    terminal = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 1], np.float32)
    ds = C.make_dataset(frames, np.arange(10), np.ones(10), terminal, [2, 3, 4, 7, 8, 9], 10, history=3)
    b = ds.batch(jnp.array([2, 4, 7]))
    np.testing.assert_array_equal(b.obs[..., 0], [[0, 0, 1], [1, 2, 3], [0, 0, 4]])
    np.testing.assert_array_equal(b.next_obs[..., 0][0], [0, 1, 2])
    np.testing.assert_array_equal(b.discount, [1, 0, 1])
    np.testing.assert_array_equal(b.next_action, [3, 5, 8])
    # Discounted returns to go: episode 1 rewards 1,1,1 with gamma 0.99 from row 2.
    assert float(b.mc_return[0]) == pytest.approx(1 + 0.99 + 0.99**2)


def test_returns_to_go_stop_at_cuts_that_are_not_terminations():
    # Rows [1, 1 | 10, terminal]: a cut after row 1 (a truncation, a stream's or a checkpoint's end)
    # ends the sum there; without the cut the first piece would borrow the next episode's reward.
    np.testing.assert_allclose(C.returns_to_go(np.array([1.0, 1.0, 10.0]), np.array([0, 1, 1]), 0.9), [1.9, 1.0, 10.0])
    np.testing.assert_allclose(C.returns_to_go(np.array([1.0, 1.0, 10.0]), np.array([0, 0, 1]), 0.9),
                               [1 + 0.9 + 8.1, 1 + 9.0, 10.0])
    ds = C.make_dataset(np.zeros((3, 1)), [0, 0, 0], [1.0, 1.0, 10.0], [0, 0, 1], [0, 2], 2, 1, gamma=0.9,
                        cut=[False, True, False])
    np.testing.assert_allclose(ds.mc_return, [1.9, 1.0, 10.0])


def test_dataset_identity_follows_the_contents():
    a, b = _toy_dataset(seed=0), _toy_dataset(seed=0)
    assert a.ident == b.ident and a.ident
    assert _toy_dataset(seed=1).ident != a.ident
    noisier = C.make_dataset(np.asarray(a.obs), np.asarray(a.action), np.asarray(a.reward) + 1.0,
                             np.asarray(a.terminal), np.asarray(a.valid), a.num_actions, 1)
    assert noisier.ident != a.ident


def test_collect_dataset_is_deterministic_and_cached(tmp_path, monkeypatch):
    cfg = C.CollectConfig(num_envs=4, learning_starts=64, target_update_period=10)
    a = C.collect_dataset("bsuite/catch", 0.3, 400, seed=1, cfg=cfg, data_dir=tmp_path, progress=False)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and not any(p.name.startswith(".") for p in files)  # atomic: no temp left
    fresh = C.collect_dataset("bsuite/catch", 0.3, 400, seed=1, cfg=cfg, data_dir=tmp_path / "other", progress=False)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(fresh)):
        np.testing.assert_array_equal(x, y)
    assert a.ident == fresh.ident
    monkeypatch.setattr(C, "_collect", lambda *a, **k: pytest.fail("the cache was not reused"))
    cached = C.collect_dataset("bsuite/catch", 0.3, 400, seed=1, cfg=cfg, data_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(cached.obs, a.obs)
    assert a.obs.shape[0] == 400 and len(a) <= 400 and a.num_actions == 3
    # Catch episodes last 9 steps and always terminate: every row but a stream's unfinished tail is valid.
    assert len(a) >= 400 - 4 * 9


def test_collected_returns_to_go_do_not_run_across_streams_or_truncations(tmp_path):
    """The 4 environments' streams are concatenated; a stream's unfinished tail (and any truncated
    step) ends its piece of episode: its return-to-go is its own reward, not the next stream's."""
    cfg = C.CollectConfig(num_envs=4, learning_starts=10_000)
    ds = C.collect_dataset("bsuite/catch", 1.0, 200, seed=0, cfg=cfg, data_dir=tmp_path, progress=False)
    outside = np.setdiff1d(np.arange(ds.obs.shape[0]), np.asarray(ds.valid))
    assert len(outside) > 0  # the streams' tails
    np.testing.assert_array_equal(np.asarray(ds.mc_return)[outside], np.asarray(ds.reward)[outside])


def test_collect_dataset_pads_episodes_for_histories(tmp_path):
    cfg = C.CollectConfig(num_envs=2, learning_starts=10_000)
    ds = C.collect_dataset("bsuite/memory_len", 0.0, 60, seed=0, history=C.MEMORY_LENGTH + 1, cfg=cfg,
                           data_dir=tmp_path, progress=False)
    valid = np.asarray(ds.valid)
    # Each stream starts with MEMORY_LENGTH padding rows, so the first sampleable row is row 10, and
    # its history is that padding followed by the episode's first observation (time-to-go 1.0).
    assert valid[0] == C.MEMORY_LENGTH
    first = np.asarray(ds.stacked_obs(jnp.asarray(valid[:1]))[0])
    assert np.all(first[:-1] == 0) and first[-1, 0, 0] == 1.0
    # 10 padding rows open each of the 2 streams and follow each of its terminal steps.
    terminals = int(np.asarray(ds.terminal).sum())
    assert ds.obs.shape[0] == 60 + C.MEMORY_LENGTH * (2 + terminals)


def test_corrupt_cache_is_reported_and_remade(tmp_path, capsys):
    cfg = C.CollectConfig(num_envs=2, learning_starts=10_000)
    a = C.collect_dataset("bsuite/catch", 0.0, 40, seed=0, cfg=cfg, data_dir=tmp_path, progress=False)
    path = next(tmp_path.iterdir())
    path.write_bytes(path.read_bytes()[:100])
    b = C.collect_dataset("bsuite/catch", 0.0, 40, seed=0, cfg=cfg, data_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert "unreadable" in err and str(path) in err
    np.testing.assert_array_equal(a.obs, b.obs)


def test_load_dqn_replay_on_synthetic_files(tmp_path):
    files = write_dqn_replay(tmp_path, 0, episodes=[3, 4])
    # Rows: 0-2 pad, 3-5 episode 1 (5 terminal), 6-8 pad, 9-12 episode 2 (12 terminal, last row).
    ds = C.load_dqn_replay(tmp_path, [0], num_actions=3)
    assert np.asarray(ds.valid).tolist() == [3, 4, 5, 9, 10, 11]  # 12 is the last row: no successor
    b = ds.batch(jnp.array([3, 5, 9, 11]))
    assert b.obs.shape == (4, 4, 84, 84) and b.obs.dtype == jnp.uint8
    np.testing.assert_array_equal(b.obs[:, :, 0, 0], [[0, 0, 0, 10], [0, 10, 11, 12], [0, 0, 0, 20], [0, 20, 21, 22]])
    np.testing.assert_array_equal(b.discount, [1, 0, 1, 1])
    np.testing.assert_array_equal(b.next_obs[0, :, 0, 0], [0, 0, 10, 11])
    # Frames are stored once: bytes per transition within 5% of one 84x84 frame.
    assert ds.nbytes() / len(files["observation"]) <= 1.05 * 84 * 84


def test_load_dqn_replay_invalid_range_and_concatenation(tmp_path):
    write_dqn_replay(tmp_path, 0, episodes=[3, 4], invalid_range=[4, 10])
    write_dqn_replay(tmp_path, 1, episodes=[5])
    ds = C.load_dqn_replay(tmp_path, [0, 1], num_actions=3)
    # Checkpoint 1 starts at row 13: its rows 3..6 (+13) are valid, its last row 7 is terminal-last.
    assert np.asarray(ds.valid).tolist() == [3, 5, 9, 11, 16, 17, 18, 19]


def test_dqn_replay_returns_to_go_stop_at_checkpoint_ends_and_the_write_cursor(tmp_path):
    # Checkpoint 0 ends mid-episode (its last row is not terminal); checkpoint 1 follows it.
    write_dqn_replay(tmp_path, 0, episodes=[2, 3], last_terminal=False)
    write_dqn_replay(tmp_path, 1, episodes=[2])
    ds = C.load_dqn_replay(tmp_path, [0, 1], num_actions=3, gamma=0.5)
    mc, reward = np.asarray(ds.mc_return), np.asarray(ds.reward)
    assert mc[10] == reward[10] == 3.0  # checkpoint 0's last row: 3, not 3 + 0.5 * (checkpoint 1's rows)
    assert mc[9] == pytest.approx(2 + 0.5 * 3)
    # A wrapped circular buffer: the cursor (add_count - 1 mod rows) is the newest row; the row
    # after it is the oldest. Nothing carries across.
    other = tmp_path / "wrapped"
    other.mkdir()
    write_dqn_replay(other, 0, episodes=[6], add_count=9 + 4, last_terminal=False)  # 9 rows, cursor at row 3
    ds = C.load_dqn_replay(other, [0], num_actions=3, gamma=0.5)
    assert float(ds.mc_return[3]) == float(ds.reward[3]) == 1.0


def test_load_dqn_replay_errors_name_the_file(tmp_path):
    with pytest.raises(C.DatasetError, match="does not exist"):
        C.load_dqn_replay(tmp_path / "nowhere", [0])
    write_dqn_replay(tmp_path, 0, episodes=[3])
    with pytest.raises(C.DatasetError, match=r"missing DQN Replay file .*ckpt\.1\.gz"):
        C.load_dqn_replay(tmp_path, [1])
    target = tmp_path / "$store$_reward_ckpt.0.gz"
    target.write_bytes(target.read_bytes()[:20])
    with pytest.raises(C.DatasetError, match=r"corrupt DQN Replay file .*\$store\$_reward_ckpt\.0\.gz"):
        C.load_dqn_replay(tmp_path, [0])


# ---------------------------------------------------------------------------------------------
# Offline trainer
# ---------------------------------------------------------------------------------------------

TINY = C.TrainConfig(num_steps=200, chunk_steps=50, batch_size=16, optimizer="adam", target_update_period=20,
                     probe_size=512, eval_every=0)
DQN = C.DoubleDQN(gamma=0.99)


def _train(members, cfg=TINY, loss=DQN, net=None, **kw):
    ds = _toy_dataset()
    return C.train_offline(net or C.MLP(ds.num_actions, (16, 16)), ds, loss, members, cfg, progress=False,
                           columns={"study": "test", "env": "bsuite/catch", "agent": "dqn"}, **kw)


def _rows(result, metric):
    return [r for r in result.rows if r["metric"] == metric]


def _member(i, result):
    return jax.tree_util.tree_map(lambda x: x[i], result.state.params)


def test_seeds_differ_and_a_fixed_seed_repeats_bitwise():
    members = [C.Member(0, 1e-3), C.Member(1, 1e-3)]
    first, again = _train(members), _train(members)
    p0, p1 = _member(0, first), _member(1, first)
    assert not np.allclose(jax.tree_util.tree_leaves(p0)[0], jax.tree_util.tree_leaves(p1)[0])
    for x, y in zip(jax.tree_util.tree_leaves(first.state.params), jax.tree_util.tree_leaves(again.state.params)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(jax.random.key_data(first.state.key), jax.random.key_data(again.state.key))
    assert first.rows == again.rows


def test_traced_learning_rate_member_equals_a_separate_run():
    sweep = _train([C.Member(0, 1e-4), C.Member(0, 3e-3)])
    alone = _train([C.Member(0, 3e-3)])
    for x, y in zip(jax.tree_util.tree_leaves(_member(1, sweep)), jax.tree_util.tree_leaves(_member(0, alone))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # ...and the two learning rates really trained differently.
    assert not np.allclose(jax.tree_util.tree_leaves(_member(0, sweep))[0], jax.tree_util.tree_leaves(_member(1, sweep))[0])


def test_loss_falls_on_a_tiny_dataset():
    for loss in (C.BehaviourCloning(), C.DoubleDQN(0.99), C.MonteCarlo()):
        cfg = dataclasses.replace(TINY, num_steps=600, chunk_steps=100, batch_size=32, target_update_period=50)
        # All-terminal data make the TD target r itself, so every loss has a fixed target to fit.
        ds = _toy_dataset()
        ds = ds.replace(terminal=jnp.ones_like(ds.terminal))
        result = C.train_offline(C.MLP(ds.num_actions, (16, 16)), ds, loss, [C.Member(0, 3e-3)], cfg, progress=False)
        losses = [r["value"] for r in _rows(result, "loss")]
        assert losses[-1] < 0.5 * losses[0], (loss, losses)


def test_metrics_rows_carry_the_run_and_member_columns():
    result = _train([C.Member(0, 1e-3, columns={"lr": 1e-3}), C.Member(1, 1e-3, columns={"lr": 1e-3})])
    assert set(result.rows[0]) == {"study", "env", "agent", "lr", "seed", "step", "metric", "value"}
    srank = _rows(result, "srank")
    assert sorted({r["step"] for r in srank}) == [0, 50, 100, 150, 200] and len(srank) == 10
    assert all(1 <= r["value"] <= 16 for r in srank) and all(r["lr"] == 1e-3 for r in srank)


def test_a_run_records_each_trainer_calls_wall_time_under_its_label():
    """meta.json's ``trainings``: per trainer call, its progress bar's label and the member columns
    every member shares, so two sweeps that differ only in a shared setting are told apart."""
    timings = C.Timings()
    cfg = dataclasses.replace(TINY, num_steps=50)
    for batch in (16, 32):
        _train([C.Member(s, 1e-3 * (s + 1), columns={"lr": 1e-3 * (s + 1), "batch_size": batch}) for s in (0, 1)],
               cfg=cfg, timings=timings)
    _train([C.Member(0, 1e-3, columns={"lr": 1e-3, "batch_size": 16})], cfg=cfg, timings=timings)
    first = timings.trainings["test bsuite/catch dqn batch_size=16"]
    _train([C.Member(s, 1e-3 * s, columns={"lr": 1e-3 * s, "batch_size": 16}) for s in (2, 3)], cfg=cfg,
           timings=timings)
    assert timings.trainings["test bsuite/catch dqn batch_size=16"] > first  # calls with one label add up
    trainings = timings.meta()["trainings"]
    assert sorted(trainings) == ["test bsuite/catch dqn batch_size=16", "test bsuite/catch dqn batch_size=32",
                                 "test bsuite/catch dqn lr=0.001 batch_size=16"]
    assert all(seconds > 0 for seconds in timings.trainings.values())  # meta.json's, rounded to 0.1 s, may be 0
    assert "trainings" not in C.Timings().meta()  # a run with no trainer call (tandem) records none


def test_a_diverged_member_is_marked_and_the_others_go_on(capsys):
    result = _train([C.Member(0, 1e-3, columns={"run": "ok"}), C.Member(0, float("nan"), columns={"run": "bad"})])
    assert result.diverged == {1: 50}
    assert "diverged" in capsys.readouterr().err
    bad = [r["value"] for r in _rows(result, "srank") if r["run"] == "bad" and r["step"] > 0]
    assert all(np.isnan(v) for v in bad)
    alone = _train([C.Member(0, 1e-3)])
    np.testing.assert_allclose(jax.tree_util.tree_leaves(_member(0, result))[0],
                               jax.tree_util.tree_leaves(_member(0, alone))[0], rtol=1e-5, atol=1e-6)
    assert any(r["metric"] == "diverged" and r["run"] == "bad" for r in result.rows)


def test_member_data_size_restricts_sampling_to_the_order_prefix():
    ds = _toy_dataset()
    order = np.asarray(ds.valid)[::-1].copy()
    cfg = dataclasses.replace(TINY, num_steps=50, chunk_steps=50, batch_size=8)
    net = C.MLP(ds.num_actions, (8,))
    # With data_size 1 every minibatch is the single row order[0]; BC then fits that row's action.
    res = C.train_offline(net, ds, C.BehaviourCloning(), [C.Member(0, 1e-2, data_size=1)], cfg, order=order,
                          progress=False)
    row = int(order[0])
    logits, _ = net.apply(_member(0, res), ds.stacked_obs(jnp.array([row])))
    assert int(jnp.argmax(logits[0])) == int(ds.action[row])


def test_member_target_update_periods_are_per_member():
    # Four steps: period 2 copies the online weights at step 4, period 3 last copied them at step 3.
    cfg = dataclasses.replace(TINY, num_steps=4, chunk_steps=4, batch_size=8, target_update_period=2)
    result = _train([C.Member(0, 1e-2), C.Member(0, 1e-2, target_update_period=3)], cfg)
    leaf = lambda tree, i: jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[i], tree))[0]
    np.testing.assert_array_equal(leaf(result.state.params, 0), leaf(result.state.target_params, 0))
    assert not np.allclose(leaf(result.state.params, 1), leaf(result.state.target_params, 1))


@dataclasses.dataclass(frozen=True)
class FeaturePenalty:
    """A test loss: double DQN plus settings["weight"] x mean squared features (how a study's
    auxiliary loss reads a per-member setting)."""

    def __call__(self, apply, params, target_params, batch, settings, key, loss_state=()):
        value, aux = DQN(apply, params, target_params, batch, settings, key)
        return value + settings["weight"] * jnp.mean(aux["features"] ** 2), aux


def test_member_settings_reach_the_loss_and_a_zero_weight_is_plain_training():
    plain = _train([C.Member(0, 1e-3)])
    weighted = _train([C.Member(0, 1e-3, settings={"weight": 0.0}), C.Member(0, 1e-3, settings={"weight": 10.0})],
                      loss=FeaturePenalty())
    leaf = lambda r, i: jax.tree_util.tree_leaves(_member(i, r))[0]
    np.testing.assert_allclose(leaf(weighted, 0), leaf(plain, 0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(leaf(weighted, 1), leaf(plain, 0), atol=1e-4)


def test_the_gradient_rule_is_the_trainers_hook():
    def frozen(loss_of_params, params, settings):  # a rule that never moves the parameters
        (value, aux), grads = C.plain_gradient(loss_of_params, params, settings)
        return (value, aux), jax.tree_util.tree_map(jnp.zeros_like, grads)

    result = _train([C.Member(0, 1e-2)], gradient=frozen)
    start = C.initial_params(C.MLP(3, (16, 16)), jnp.zeros((1, 4)), [0])
    for a, b in zip(jax.tree_util.tree_leaves(result.state.params), jax.tree_util.tree_leaves(start)):
        np.testing.assert_array_equal(a, b)


def test_initial_params_reuse_the_trainers_compiled_initialisation(monkeypatch):
    """exp_activation reads the trainer's initial weights of every network (initial_params): they
    come from the trainer's own compiled program (about a second to compile per network), for any
    number of seeds (the trainer pads them to the device count: here as if on 2 devices)."""
    monkeypatch.setattr(C, "member_padding", lambda n: n % 2)
    C._init_fn.cache_clear()
    net = C.MLP(3, (16, 16), "tanh")
    seeds = [0, 1, 2]
    result = _train([C.Member(s, 1e-2) for s in seeds], cfg=dataclasses.replace(TINY, num_steps=50), net=net)
    init = C._init_fn(net, "adam", None)
    compiled = init._cache_size()
    start = C.initial_params(net, _toy_dataset().obs[:1], seeds)
    assert init._cache_size() == compiled == 1
    trained_from = C.init_learners(net, _toy_dataset().obs[:1], C.seed_keys(seeds), [1e-2] * 3, "adam").params
    for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(trained_from)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree_util.tree_leaves(result.state.params)[0].shape[0] == 3


def test_chunk_plan_splits_the_first_chunk():
    cfg = dataclasses.replace(TINY, num_steps=3000, chunk_steps=1000)
    assert C.chunk_plan(cfg) == [1000] * 3
    assert C.chunk_plan(dataclasses.replace(cfg, early_chunk_steps=250)) == [250] * 4 + [1000] * 2
    with pytest.raises(ValueError, match="multiple"):
        C.chunk_plan(dataclasses.replace(cfg, num_steps=2500))


def test_initial_params_equal_the_trainers_initial_weights():
    net = C.MLP(3, (8, 8), "elu")
    obs = jnp.ones((1, 5))
    expected = C.init_learners(net, obs, C.seed_keys([0, 3, 3]), [1e-3] * 3, "adam").params
    got = C.initial_params(net, obs, [0, 3, 3])
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------
# Evaluation and results
# ---------------------------------------------------------------------------------------------


def test_evaluate_policies_shapes_and_transform_hook():
    net = C.MLP(3, (8,))
    params = jax.vmap(lambda k: net.init(k, jnp.zeros((1, 10, 5))))(jax.random.split(jax.random.key(0), 2))
    returns, no_error = C.evaluate_policies(net, params, "bsuite/catch", 4, seed=0)
    assert returns.shape == (2, 4) and no_error is None and set(np.unique(returns)) <= {-1.0, 1.0}
    same, _ = C.evaluate_policies(net, params, "bsuite/catch", 4, seed=0, obs_transform=lambda k, o: o)
    np.testing.assert_array_equal(returns, same)
    seen = {}

    def spy(key, obs):
        seen["shape"] = obs.shape
        return obs

    C.evaluate_policies(net, params, "bsuite/catch", 4, seed=0, obs_transform=spy)
    assert seen["shape"] == (8, 10, 5)
    np.testing.assert_array_equal(C.Evaluator("bsuite/catch", 4, seed=0)(net, params)["return"], returns.mean(axis=1))


def test_evaluation_compiles_its_policy_once():
    """The parameters an evaluation gets live on one device (C.unsharded); the policy carries the
    key from step to step, so the first key must live there too, or the second step compiles the
    policy again (the robustness smoke run compiled 12 policies instead of 6)."""
    net = C.MLP(3, (8,))
    params = jax.vmap(lambda k: net.init(k, jnp.zeros((1, 10, 5))))(jax.random.split(jax.random.key(0), 2))
    params = jax.device_put(params, jax.local_devices()[0])
    C._act_fn.cache_clear()
    first, _ = C.evaluate_policies(net, params, "bsuite/catch", 4, seed=0, epsilon=0.5)
    C.evaluate_policies(net, params, "bsuite/catch", 4, seed=1, epsilon=0.5)
    assert C._act_fn(net, 2, 4, 0.5)._cache_size() == 1
    again, _ = C.evaluate_policies(net, params, "bsuite/catch", 4, seed=0, epsilon=0.5)
    np.testing.assert_array_equal(first, again)


def test_evaluation_skips_finished_minatar_episodes_without_changing_results(monkeypatch):
    """The evaluator steps only the MinAtar envs whose first episode still runs. The returns and
    value errors must be exactly those of stepping every env, with fewer env steps."""
    net = C.MinAtarCNN(3)
    params = jax.vmap(lambda k: net.init(k, jnp.zeros((1, 10, 10, 4))))(jax.random.split(jax.random.key(1), 2))
    calls = {"n": 0}
    step_one = C.MinAtarEnv._step_one

    def counted(self, i, action):
        calls["n"] += 1
        return step_one(self, i, action)

    monkeypatch.setattr(C.MinAtarEnv, "_step_one", counted)
    skipped = C.evaluate_policies(net, params, "minatar/breakout", 6, seed=3, epsilon=0.3, gamma=0.9, max_steps=400)
    skipping_calls, calls["n"] = calls["n"], 0
    every_env = C._LoopEnv.step
    monkeypatch.setattr(C.MinAtarEnv, "step", lambda self, actions, active=None: every_env(self, actions))
    stepped = C.evaluate_policies(net, params, "minatar/breakout", 6, seed=3, epsilon=0.3, gamma=0.9, max_steps=400)
    for a, b in zip(skipped, stepped):
        np.testing.assert_array_equal(a, b)
    assert skipping_calls < calls["n"]


def test_value_error_hand_computed():
    """A network whose Q is the constant c everywhere: on catch (9 steps, reward r = +-1 at the end)
    the discounted return from step t is r * gamma^(8 - t), so the value error is their mean gap."""
    net = C.MLP(3, (8,))
    params = jax.vmap(lambda k: net.init(k, jnp.zeros((1, 10, 5))))(jax.random.split(jax.random.key(0), 2))
    c = jnp.asarray([0.5, -0.25])
    params = jax.tree_util.tree_map(jnp.zeros_like, params)
    params["params"]["head"]["bias"] = jnp.repeat(c[:, None], 3, axis=1)
    returns, error = C.evaluate_policies(net, params, "bsuite/catch", 3, seed=0, gamma=0.9)
    for m in range(2):
        expected = np.mean([abs(float(c[m]) - r * 0.9 ** (8 - t)) for r in returns[m] for t in range(9)])
        assert error[m] == pytest.approx(expected, rel=1e-5)


def test_metrics_round_trip_typed_settings(tmp_path):
    rows = [{"study": "s", "env": "bsuite/catch", "agent": "dqn", "seed": s, "lr": lr, "activation": "relu",
             "step": t, "metric": "srank", "value": float(s + t)} for s in (0, 1) for t in (0, 10) for lr in (1.2e-05, 0.1)]
    rows.append({"study": "s", "env": "bsuite/catch", "agent": "random", "seed": 0, "step": 0, "metric": "return",
                 "value": float("nan")})
    C.write_metrics(tmp_path, rows)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["study", "env", "agent", "seed", "lr", "activation", "step", "metric", "value"]
    m = C.Metrics(tmp_path / "metrics.csv")
    assert m.values("lr", agent="dqn") == [1.2e-05, 0.1]  # exact floats, not labels
    steps, grid = m.curves(metric="srank", lr=1.2e-05)
    assert steps.tolist() == [0, 10] and grid.tolist() == [[0, 10], [1, 11]]
    assert m.values("lr", agent="random") == [None] and np.isnan(m.last(agent="random", metric="return")[0])
    C.write_metrics(tmp_path, rows, "metrics.csv.gz")
    gz = C.Metrics(tmp_path / "metrics.csv.gz")
    assert gz.values("activation") == ["relu", None] and len(gz) == len(m)


def test_meta_names_the_commit_the_run_started_from(tmp_path, monkeypatch):
    """A long run's meta.json names the code it ran, even if a commit lands while it trains."""
    heads = iter(["commit-at-start", "commit-made-during-the-run"])
    monkeypatch.setattr(C, "git_commit", lambda: next(heads))
    monkeypatch.setattr(C, "git_dirty", lambda: False)

    def run(config, out, timings):
        C.git_commit()  # someone commits while the run trains
        C.write_metrics(out, [{"study": "s", "env": "bsuite/catch", "agent": "dqn", "seed": 0, "step": 0,
                               "metric": "srank", "value": 1.0}])

    study = C.Study("s", "", {"cpu": None}, run, claims=lambda m, c: [], plot=lambda m, c, out: None)
    C._run_study(study, "cpu", {}, tmp_path, plot_only=False, figures=tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["git_commit"] == "commit-at-start" and meta["git_dirty"] is False


def test_seed_test_is_an_exact_sign_flip_test_with_a_student_t_interval():
    t = C.seed_test([0.3, 0.5, 0.2, 0.4, 0.1])
    assert t.n == 5 and t.mean == pytest.approx(0.3)
    assert t.p_greater == pytest.approx(1 / 32) and t.p_less == pytest.approx(1.0)  # every seed above 0
    # s = sqrt(0.025) = 0.1581, t(0.975, 4) = 2.7764: 0.3 +- 2.7764 x 0.1581 / sqrt(5) = 0.3 +- 0.1963
    assert (t.low, t.high) == (pytest.approx(0.3 - 0.19632, abs=1e-5), pytest.approx(0.3 + 0.19632, abs=1e-5))
    t = C.seed_test([0.3, 0.5, -0.2, 0.4, 0.1])
    assert t.p_greater == pytest.approx(3 / 32)  # flips of the -0.2 alone, and of 0.1 or of 0.1 and -0.2 tie or beat
    assert C.seed_test([1.0, np.nan, 2.0]).n == 2
    assert C.seed_test([0.5] * 5).p_greater == pytest.approx(1 / 32)  # a constant difference
    assert C.seed_test([0.0] * 5).p_greater == 1.0 == C.seed_test([0.0] * 5).p_less
    assert C.seed_test([1.0, 2.0], null=1.5).mean == 1.5


def test_every_part_decides_by_its_weakest_part():
    held, against = C.directional("x", [1, 2, 3, 4, 5], "greater"), C.directional("x", [1, 2, 3, 4, 5], "less")
    mixed, untestable = C.directional("x", [1, -2, 3, -4, 5], "greater"), C.directional("x", [1.0], "greater")
    assert C.every_part("e", {"a": held, "b": held}).verdict == "held"
    both = C.every_part("e", {"a": held, "b": against})
    assert (both.verdict, both.env, both.note) == ("not held", "e", "b")  # the deciding part, named
    assert C.every_part("e", {"a": mixed, "b": against}).verdict == "not held"
    assert C.every_part("e", {"a": held, "b": mixed}).verdict == "inconclusive"
    assert C.every_part("e", {"a": mixed, "b": untestable}).verdict == "not testable here"


def test_directional_and_two_sided_verdicts():
    assert C.directional("e", [1, 2, 3, 4, 5], "greater").verdict == "held"
    assert C.directional("e", [1, 2, 3, 4, 5], "less").verdict == "not held"
    assert C.directional("e", [1, -2, 3, -4, 5], "greater").verdict == "inconclusive"
    assert C.directional("e", [1, 2], "greater").verdict == "inconclusive"  # 2 seeds: p >= 1/4
    assert C.directional("e", [1.0, np.nan, np.nan], "greater").verdict == "not testable here"
    assert C.directional("e", [0.4, 0.6, 0.7, 0.8, 0.9], "greater", null=0.5).verdict == "inconclusive"
    assert C.two_sided("e", [0.01, -0.02, 0.0, 0.02, 0.01], 0.1, "equal").verdict == "held"
    assert C.two_sided("e", [0.01, 0.02, 0.03, 0.02, 0.01], 0.1, "equal").verdict == "held"  # negligible
    assert C.two_sided("e", [1.0, 1.2, 0.9, 1.1, 1.0], 0.1, "equal").verdict == "not held"
    assert C.two_sided("e", [1.0, 1.2, 0.9, 1.1, 1.0], 0.1, "different").verdict == "held"
    assert C.two_sided("e", [1.0, -1.2, 0.9, -1.1, 0.0], 0.1, "different").verdict == "inconclusive"
    assert C.two_sided("e", [1.0, 1.1, 1.2], 0.1, "different").verdict == "inconclusive"  # under 4 seeds


def test_overall_verdict_and_summary():
    ev = lambda *verdicts: [C.Evidence(f"bsuite/{i}", v) for i, v in enumerate(verdicts)]
    claim = lambda *verdicts: C.Claim("x", "p", "s", "r", tuple(ev(*verdicts)))
    assert claim("held", "held").verdict == "held"
    assert claim("held", "held", "inconclusive").verdict == "held"
    assert claim("held", "inconclusive", "inconclusive").verdict == "inconclusive"
    assert claim("held", "not held").verdict == "inconclusive"
    assert claim("not held", "not held", "not testable here").verdict == "not held"
    assert claim("not testable here").verdict == "not testable here"
    assert claim("held", "inconclusive", "not testable here").summary == \
        "held in 1 of 2 testable environments (1 inconclusive, 1 not testable)"


def test_claims_json_round_trip(tmp_path, capsys):
    claim = C.Claim("c1", "the paper", "stat", "rule", (C.directional("bsuite/catch", [1, 2, 3, 4, 5], "greater"),))
    C.write_claims(tmp_path, [claim])
    saved = json.loads((tmp_path / "claims.json").read_text())[0]
    assert saved["verdict"] == "held" and saved["evidence"][0]["p"] == pytest.approx(1 / 32)
    assert "catch: 3 [" in capsys.readouterr().out


def test_final_values_average_the_last_tenth_of_the_run():
    rows = [{"env": "e", "seed": s, "step": t, "metric": "x", "value": float(t + s)} for s in (0, 1)
            for t in range(0, 101, 10)]
    m = C.Metrics.from_rows(rows)
    np.testing.assert_allclose(C.final_values(m, "x"), [95.0, 96.0])  # steps 90 and 100


def test_detect_phases():
    steps = np.asarray([0, 100, 200, 1000, 5000, 10000, 50000, 90000, 100000])
    collapse_rise_collapse = np.asarray([40, 8, 6, 10, 20, 30, 25, 5, 4])
    p = C.detect_phases(steps, collapse_rise_collapse)
    assert p.early_collapse and p.rise and p.late_collapse and p.final_phase == 3 and p.minimum == (200, 6.0)
    assert C.detect_phases(steps, np.asarray([40, 8, 6, 10, 20, 30, 25, 28, 29])).final_phase == 2
    stuck = C.detect_phases(steps, np.asarray([40, 8, 6, 7, 8, 9, 8, 7, 8]))  # +3 units: not a rise
    assert stuck.early_collapse and not stuck.rise and stuck.final_phase == 1
    slow = C.detect_phases(steps, np.asarray([40, 39, 38, 37, 30, 10, 9, 30, 30]))  # no collapse in 2,000 steps
    assert not slow.early_collapse and slow.final_phase == 0


def test_stderr():
    mean, err = C.mean_and_stderr(np.array([[1.0, 2.0], [3.0, 2.0]]))
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(err, [np.std([1, 3], ddof=1) / np.sqrt(2), 0.0])


def test_correlations_hand_computed():
    assert C.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert C.pearson([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert np.isnan(C.pearson([1, 1, 1], [1, 2, 3]))
    # Monotone but not linear: Spearman 1, Pearson below 1.
    assert C.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    # Ties get average ranks: x ranks [0.5, 0.5, 2], y ranks [0, 1, 2] -> r = sqrt(3)/2.
    assert C.spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)
    assert C.spearman([1, 2, np.nan, 4], [4, 3, 0, 1]) == pytest.approx(-1.0)


def test_patch_conv_equals_flax_conv():
    x = jax.random.normal(jax.random.key(0), (3, 10, 10, 4))
    patch = C.PatchConv(16, (3, 3))
    params = patch.init(jax.random.key(1), x)
    import flax.linen as nn

    expected = nn.Conv(16, (3, 3), padding="VALID").apply(params, x)
    np.testing.assert_allclose(patch.apply(params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, axes, dtype", [((4, 10, 10, 3), (1, 2), jnp.uint8), ((2, 4, 12, 12), (2, 3), jnp.uint8),
                                                ((3, 10, 10, 2), (1, 2), jnp.float32)])
def test_random_shift_keeps_shape_and_dtype_and_is_identity_at_zero(shape, axes, dtype):
    obs = (jax.random.uniform(jax.random.key(0), shape) * 255).astype(dtype)
    key = jax.random.key(1)
    out = jax.jit(C.random_shift, static_argnums=(2, 3))(key, obs, 2, axes)
    assert out.shape == obs.shape and out.dtype == obs.dtype and not np.array_equal(out, obs)
    np.testing.assert_array_equal(C.random_shift(key, obs, 0, axes), obs)


def test_random_shift_is_a_crop_of_the_edge_padded_image():
    image = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
    out = np.asarray(C.random_shift(jax.random.key(3), image, 1))[0, :, :, 0]
    padded = np.pad(np.asarray(image)[0, :, :, 0], 1, mode="edge")
    crops = [padded[i:i + 5, j:j + 5] for i in range(3) for j in range(3)]
    assert any(np.array_equal(out, c) for c in crops)


@pytest.mark.parametrize("pad", [0, 1, 2, 3])
def test_random_shift_with_a_traced_pad_equals_the_static_one(pad):
    """One compiled program serves every pad (the robustness study's levels), with the same pixels:
    each sample is a crop of its edge-padded image, and the crops vary across samples."""
    images = jax.random.randint(jax.random.key(0), (32, 6, 7, 2), 0, 256).astype(jnp.uint8)
    key = jax.random.key(4)
    static = np.asarray(C.random_shift(key, images, pad))
    np.testing.assert_array_equal(jax.jit(C.random_shift)(key, images, pad), static)
    offsets = set()
    for image, out in zip(np.asarray(images), static):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        crops = {(i, j): padded[i:i + 6, j:j + 7] for i in range(2 * pad + 1) for j in range(2 * pad + 1)}
        offsets.add(next(o for o, c in crops.items() if np.array_equal(out, c)))  # StopIteration: not a crop
    assert len(offsets) == 1 if pad == 0 else len(offsets) > 1  # per-sample offsets


# ---------------------------------------------------------------------------------------------
# The deadlock: no batched LAPACK call in any compiled program
# ---------------------------------------------------------------------------------------------


def lapack_batch_dims(compiled) -> list[int]:
    """Batch dimensions of every LAPACK custom call in a compiled XLA program."""
    import re

    return [int(re.search(r'num_batch_dims="(\d+)"', line).group(1))
            for line in compiled.as_text().splitlines() if 'custom_call_target="lapack_' in line]


def test_no_batched_lapack_call_in_the_initialisation_or_the_probe():
    """jaxlib 0.10's batched CPU LAPACK kernels can deadlock XLA's thread pool (C.per_member): the
    programs that run a factorisation per member must run them one member at a time."""
    lstm = C.RecurrentQNetwork(2, 16)
    obs = jnp.zeros((1, 4, 3))
    keys = jnp.stack([jax.random.key_data(k) for k in C.seed_keys(range(3))])
    dims = lapack_batch_dims(C._init_fn(lstm, "adam").lower(obs, keys, jnp.ones(3)).compile())
    assert dims and set(dims) == {0}  # the QRs of the orthogonal initialiser, unbatched
    state = C.init_learners(lstm, obs, C.seed_keys(range(3)), [1e-3] * 3, "adam")
    dims = lapack_batch_dims(C.make_probe_fn(lstm).lower(state.params, jnp.ones((32, 4, 3))).compile())
    assert dims and set(dims) == {0}  # srank's SVD, unbatched
    # The check itself can fail: a vmapped SVD is a batched call.
    batched = jax.jit(jax.vmap(lambda x: C.effective_rank(x))).lower(jnp.ones((3, 8, 4))).compile()
    assert set(lapack_batch_dims(batched)) == {1}


def test_a_claim_on_an_environment_prints_its_evidence_as_the_claims_table_does():
    claim = C.Claim("x.claim", "p", "s", "r", (C.directional("bsuite/catch", [1, 2, 3, 4, 5], "greater"),))
    assert claim.on("bsuite/catch").startswith("claim: 3 [") and claim.on("bsuite/catch").endswith("-> held")
    assert claim.on("bsuite/cartpole") == "claim: not computed here"

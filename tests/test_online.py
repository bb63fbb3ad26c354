"""Unit tests of common.py's online DQN (the tandem study's agents): the joint step keeps the
learners apart and feeds them identical batches; the replay ring gives true successors and
Monte-Carlo returns, never draws a truncated step or a row whose successor is not written yet."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common as C
import exp_tandem as T

OBS_SHAPE = (3,)
NUM_ACTIONS = 2
CFG = dataclasses.replace(T.PRESETS["smoke"], seeds=2, num_envs=2, updates_per_step=3, replay_capacity=64,
                          learning_starts=1, target_update_period=2, batch_size=8)
NET = C.MLP(NUM_ACTIONS, (8, 8))
TANDEM = (C.DoubleDQN(CFG.gamma), C.DoubleDQN(CFG.gamma))
FORKED = (C.DoubleDQN(CFG.gamma), C.BVE(CFG.gamma), C.MonteCarlo())


@functools.lru_cache(maxsize=None)  # one compile per layout: the tests share them
def compiled_step(losses, learning_starts=CFG.learning_starts):
    return C.make_online_step(NET, "adam", losses, acting=0 if len(losses) == 2 else None, batch_size=CFG.batch_size,
                              updates_per_step=CFG.updates_per_step, learning_starts=learning_starts,
                              target_update_period=CFG.target_update_period)


@functools.lru_cache(maxsize=None)
def filled_state(losses=TANDEM):
    """A state of ``len(losses)`` independently initialised learners (seeds x learners) whose
    replay is empty, and a block of random finished transitions (seeds x rows) to insert."""
    probe = np.zeros((4, *OBS_SHAPE), np.float32)
    state = T.init_tandem(NET, CFG, "adam", 1e-2, probe)
    if len(losses) != 2:  # the forked layout: more learners, a frozen actor
        keys = jax.random.split(jax.random.key(99), len(losses) * CFG.seeds).reshape(len(losses), CFG.seeds)
        learners = tuple(C.init_learners(NET, jnp.zeros((1, *OBS_SHAPE)), list(k), [1e-2] * CFG.seeds, "adam")
                         for k in keys)
        state = state._replace(learners=learners, actor=learners[0].params)
    queue = C.EpisodeQueue(CFG.seeds, CFG.num_envs, 16, OBS_SHAPE, np.float32, CFG.gamma)
    rng = np.random.default_rng(0)
    for _ in range(20):
        done = rng.random((CFG.seeds, CFG.num_envs)) < 0.3
        queue.add(rng.normal(size=(CFG.seeds, CFG.num_envs, *OBS_SHAPE)).astype(np.float32),
                  rng.integers(NUM_ACTIONS, size=(CFG.seeds, CFG.num_envs)),
                  rng.normal(size=(CFG.seeds, CFG.num_envs)), done, np.zeros_like(done))
    return state, queue.take()


def one_step(state, block, losses, steps=1):
    step = compiled_step(losses)
    state = jax.tree_util.tree_map(jnp.copy, state)  # the step donates its input
    obs = np.zeros((CFG.seeds, CFG.num_envs, *OBS_SHAPE), np.float32)
    for _ in range(steps):
        state, _, _ = step(state, *block, obs, 0.1, True)
    return state


def perturbed(state, k):
    """Learner k's online and target parameters shifted; everything else as it was."""
    shift = lambda tree: jax.tree_util.tree_map(lambda x: x + 0.1, tree)
    learners = list(state.learners)
    learners[k] = learners[k]._replace(params=shift(learners[k].params), target_params=shift(learners[k].target_params))
    return state._replace(learners=tuple(learners))


def same(a, b) -> bool:
    a, b = C.to_host(a), C.to_host(b)  # PRNG keys as key data
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("losses", [TANDEM, FORKED], ids=["tandem", "forked"])
def test_each_agents_loss_moves_only_its_own_parameters(losses):
    state, block = filled_state(losses)
    base = one_step(state, block, losses)
    for k in range(len(losses)):  # every learner took a real update
        assert not same(base.learners[k].params, state.learners[k].params)
    for k in range(len(losses)):
        moved = one_step(perturbed(state, k), block, losses)
        for j in range(len(losses)):
            if j == k:
                assert not same(moved.learners[j].params, base.learners[j].params)
            else:  # learner k's parameters reach no other learner's update, bit for bit
                assert same(moved.learners[j].params, base.learners[j].params), (k, j)
                assert same(moved.learners[j].opt_state, base.learners[j].opt_state), (k, j)


def test_identically_initialised_agents_stay_identical():
    """Same batches in the same order and the same update: a passive copy of the active agent
    remains bitwise equal to it over several joint steps (with target copies in between)."""
    state, block = filled_state()
    state = state._replace(learners=(state.learners[0], jax.tree_util.tree_map(jnp.copy, state.learners[0])))
    after = one_step(state, block, TANDEM, steps=4)
    assert int(after.learners[0].step[0]) == 4 * CFG.updates_per_step
    assert not same(after.learners[0].params, state.learners[0].params)
    assert same(after.learners[0], after.learners[1])


def test_learners_wait_for_learning_starts():
    state, block = filled_state()
    step = compiled_step(TANDEM, learning_starts=10_000)
    obs = np.zeros((CFG.seeds, CFG.num_envs, *OBS_SHAPE), np.float32)
    after, actions, loss = step(jax.tree_util.tree_map(jnp.copy, state), *block, obs, 0.0, True)
    assert same(after.learners, state.learners) and np.isnan(np.asarray(loss)).all()
    assert actions.shape == (CFG.seeds, CFG.num_envs)
    # ...and while learning is off (a behaviour agent whose training stopped early).
    after, _, loss = compiled_step(TANDEM)(jax.tree_util.tree_map(jnp.copy, state), *block, obs, 0.0, False)
    assert same(after.learners, state.learners) and np.isnan(np.asarray(loss)).all()


def seed0(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def insert(replay, queue):
    block, sampleable, count, continues = queue.take()
    return replay.insert(seed0(block), sampleable[0], count[0], continues[0]), int(count[0])


def add(queue, obs, action, reward, terminated=False, truncated=False):
    queue.add(np.full((1, 1, 1), obs, np.float32), np.asarray([[action]]), np.asarray([[reward]], np.float32),
              np.asarray([[terminated]]), np.asarray([[truncated]]))


def test_replay_successors_and_monte_carlo_returns_across_the_ring():
    gamma = 0.5
    queue = C.EpisodeQueue(1, 1, 4, (1,), np.float32, gamma)
    replay = seed0(C.Replay.empty(6, (1,), np.float32, 1))
    # Episode A: 3 steps, rewards 1, 2, 4; episode B: 4 steps, rewards 1, 0, 0, 8 (wraps the ring of 6).
    for t, (r, done) in enumerate([(1, 0), (2, 0), (4, 1), (1, 0), (0, 0), (0, 0), (8, 1)]):
        add(queue, 10 * t, t, r, terminated=bool(done))
    replay, count = insert(replay, queue)
    assert count == 4  # at most ``block`` rows move per step
    replay, _ = insert(replay, queue)
    assert int(replay.ptr) == 1 and int(replay.size) == 6
    # Rows now: 0 <- step 6 (overwrote step 0), 1..5 <- steps 1..5.
    batch = replay.batch(jnp.arange(6))
    np.testing.assert_array_equal(batch.obs[:, 0], [60, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [10, 20, 30, 40, 50, 60])  # row 5 -> row 0 (ring)
    np.testing.assert_array_equal(batch.next_action, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(batch.discount, [0, 1, 0, 1, 1, 1])
    np.testing.assert_allclose(batch.mc_return, [8, 2 + 0.5 * 4, 4, 1 + 8 * 0.5**3, 8 * 0.25, 8 * 0.5])
    assert np.asarray(replay.sampleable).all()


def drawn(replay, n=4_000):
    return set(np.asarray(replay.sample(jax.random.key(0), (n,))[0]).tolist())


def test_an_episode_split_across_inserts_is_drawn_only_once_its_successor_is_written():
    """The queue moves at most ``block`` rows per step, so a long episode enters the replay in
    pieces. The last row of a piece has no successor yet (the row after it holds zeros): it must
    not be drawn until the next piece is written."""
    queue = C.EpisodeQueue(1, 1, 4, (1,), np.float32, 0.9)
    replay = seed0(C.Replay.empty(16, (1,), np.float32, 1))
    for t in range(6):  # one episode, observations 40..45, terminal at the end
        add(queue, 40 + t, 0, 0.0, terminated=t == 5)
    replay, _ = insert(replay, queue)  # rows 0..3: observations 40..43; 44 is not written yet
    assert drawn(replay) == {0, 1, 2}
    batch = replay.batch(jnp.arange(3))
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.obs[:, 0] + 1)
    replay, _ = insert(replay, queue)  # rows 4, 5: the rest of the episode
    assert drawn(replay) == {0, 1, 2, 3, 4, 5}
    batch = replay.batch(jnp.arange(5))
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.obs[:, 0] + 1)  # every successor is the true one


def test_a_time_limit_truncation_is_not_stored_as_a_termination():
    """A truncated episode's last step did not end the MDP: it is not a discount-0 transition, and
    its next state (the environment reset at once) is not stored, so it is never drawn."""
    queue = C.EpisodeQueue(1, 1, 16, (1,), np.float32, 0.5)
    replay = seed0(C.Replay.empty(16, (1,), np.float32, 1))
    for t in range(3):
        add(queue, t, 0, 1.0, truncated=t == 2)
    for t in range(2):
        add(queue, 10 + t, 0, 1.0, terminated=t == 1)
    replay, count = insert(replay, queue)
    assert count == 5
    batch = replay.batch(jnp.arange(5))
    np.testing.assert_array_equal(batch.discount, [1, 1, 1, 1, 0])  # the truncation keeps discount 1
    np.testing.assert_allclose(batch.mc_return[:3], [1 + 0.5 + 0.25, 1 + 0.5, 1])  # partial sums: the cut
    assert drawn(replay) == {0, 1, 3, 4}  # row 2 (the truncated step) is never drawn


def test_the_fork_copies_the_active_agent_and_its_replay(tmp_path):
    state, block = filled_state()
    state = one_step(state, block, TANDEM)
    snapshot = C.to_host(state)
    forked = T.init_forked(snapshot, CFG)
    for learner in forked.learners:
        assert same(learner.params, state.learners[0].params) and same(learner.opt_state, state.learners[0].opt_state)
    assert same(forked.actor, state.learners[0].params) and same(forked.replay, state.replay)
    # Each copy has its own buffers (the step donates them).
    after = compiled_step(FORKED)(forked, *block, np.zeros((CFG.seeds, CFG.num_envs, *OBS_SHAPE), np.float32), 0.0,
                                  True)
    assert after[1].shape == (CFG.seeds, CFG.num_envs)


@pytest.mark.parametrize("capacity", [1, 63, 64, 65, 1_000, 4_099])
@pytest.mark.parametrize("share", [0.0, 0.01, 0.5, 1.0])
def test_two_level_sampling_draws_the_rows_of_a_prefix_sum(capacity, share):
    """Replay.sample finds the (j+1)-th sampleable row through blocks; it must give exactly the row
    a prefix sum over the whole buffer gives for the same uniform j, and the sampleable count."""
    flags = jnp.asarray(np.random.default_rng(capacity).random(capacity) < share)
    replay = seed0(C.Replay.empty(capacity, (1,), np.float32, 1))._replace(sampleable=flags)
    key = jax.random.key(3)
    rows, count = replay.sample(key, (8, 32))
    cumulative = jnp.cumsum(flags.astype(jnp.int32))
    j = jax.random.randint(key, (8, 32), 0, jnp.maximum(cumulative[-1], 1))
    np.testing.assert_array_equal(rows, jnp.searchsorted(cumulative, j, side="right"))
    assert int(count) == int(flags.sum())
    if np.asarray(flags).any():
        assert np.asarray(flags)[np.asarray(rows)].all()
    else:
        assert (np.asarray(rows) == capacity).all()  # out of range: the learners are not updated yet

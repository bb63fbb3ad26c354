"""Unit tests of exp_tandem.py: the joint tandem step keeps the agents apart, feeds them identical
batches, and the replay ring gives the right successors and Monte-Carlo returns."""

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


@functools.lru_cache(maxsize=None)  # one compile per layout: the tests share them
def compiled_step(losses, learning_starts=CFG.learning_starts):
    return T.make_step(NET, dataclasses.replace(CFG, learning_starts=learning_starts), "adam", losses)


@functools.lru_cache(maxsize=None)
def filled_state(losses=("double_dqn", "double_dqn"), optimizer="adam"):
    """A state of ``len(losses)`` independently initialised learners (seeds x learners) whose replay
    replay is empty, and a block of random finished transitions (seeds x rows) for the step to insert."""
    state = T.init_tandem(NET, CFG, optimizer, OBS_SHAPE, np.float32)
    if len(losses) != 2:  # the forked layout: more learners, a frozen actor
        keys = jax.random.split(jax.random.key(99), len(losses))
        init = jax.jit(jax.vmap(lambda k: T.new_learner(NET, optimizer, 1e-2, k, jnp.zeros((1, *OBS_SHAPE)))))
        learners = tuple(init(jax.random.split(k, CFG.seeds)) for k in keys)
        state = state._replace(learners=learners, actor=learners[0].params)
    queue = T.EpisodeQueue(CFG.seeds, CFG.num_envs, 16, OBS_SHAPE, np.float32, CFG.gamma)
    rng = np.random.default_rng(0)
    for t in range(20):
        queue.add(rng.normal(size=(CFG.seeds, CFG.num_envs, *OBS_SHAPE)).astype(np.float32),
                  rng.integers(NUM_ACTIONS, size=(CFG.seeds, CFG.num_envs)),
                  rng.normal(size=(CFG.seeds, CFG.num_envs)), rng.random((CFG.seeds, CFG.num_envs)) < 0.3)
    return state, queue.take()


def one_step(state, queue_block, losses, steps=1):
    step = compiled_step(losses)
    state = jax.tree_util.tree_map(jnp.copy, state)  # the step donates its input
    obs = np.zeros((CFG.seeds, CFG.num_envs, *OBS_SHAPE), np.float32)
    for _ in range(steps):
        state, _, _ = step(state, *queue_block, obs, 0.1)
    return state


def perturbed(state, k):
    """Learner k's online and target parameters shifted; everything else as it was."""
    shift = lambda tree: jax.tree_util.tree_map(lambda x: x + 0.1, tree)
    learners = list(state.learners)
    learners[k] = learners[k]._replace(params=shift(learners[k].params), target_params=shift(learners[k].target_params))
    return state._replace(learners=tuple(learners))


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("losses", [("double_dqn", "double_dqn"), tuple(T.FORKED_LOSSES.values())],
                         ids=["tandem", "forked"])
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
    after = one_step(state, block, ("double_dqn", "double_dqn"), steps=4)
    assert int(after.learners[0].step[0]) == 4 * CFG.updates_per_step
    assert not same(after.learners[0].params, state.learners[0].params)
    assert same(after.learners[0], after.learners[1])


def test_learners_wait_for_learning_starts():
    state, block = filled_state()
    step = compiled_step(("double_dqn", "double_dqn"), learning_starts=10_000)
    obs = np.zeros((CFG.seeds, CFG.num_envs, *OBS_SHAPE), np.float32)
    after, actions, loss = step(jax.tree_util.tree_map(jnp.copy, state), *block, obs, 0.0)
    assert same(after.learners, state.learners) and np.isnan(np.asarray(loss)).all()
    assert actions.shape == (CFG.seeds, CFG.num_envs)


def test_replay_successors_and_monte_carlo_returns_across_the_ring():
    gamma = 0.5
    queue = T.EpisodeQueue(1, 1, 4, (1,), np.float32, gamma)
    replay = jax.tree_util.tree_map(lambda x: x[0], T.empty_replay(1, 6, (1,), np.float32))
    # Episode A: 3 steps, rewards 1, 2, 4; episode B: 4 steps, rewards 1, 0, 0, 8 (wraps the ring of 6).
    for t, (r, done) in enumerate([(1, 0), (2, 0), (4, 1), (1, 0), (0, 0), (0, 0), (8, 1)]):
        queue.add(np.full((1, 1, 1), 10 * t, np.float32), np.asarray([[t]]), np.asarray([[r]], np.float32),
                  np.asarray([[done]], bool))
    block, count = queue.take()
    assert count.tolist() == [4]  # at most ``block`` rows move per step
    replay = replay.insert(jax.tree_util.tree_map(lambda x: x[0], block), count[0])
    block, count = queue.take()
    replay = replay.insert(jax.tree_util.tree_map(lambda x: x[0], block), count[0])
    assert int(replay.ptr) == 1 and int(replay.size) == 6
    # Rows now: 0 <- step 6 (overwrote step 0), 1..5 <- steps 1..5.
    batch = replay.batch(jnp.arange(6))
    np.testing.assert_array_equal(batch.obs[:, 0], [60, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [10, 20, 30, 40, 50, 60])  # row 5 -> row 0 (ring)
    np.testing.assert_array_equal(batch.next_action, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(batch.discount, [0, 1, 0, 1, 1, 1])
    np.testing.assert_allclose(batch.mc_return, [8, 2 + 0.5 * 4, 4, 1 + 8 * 0.5**3, 8 * 0.25, 8 * 0.5])

"""DQNReplayStream: a whole DQN Replay run with a few checkpoints resident at a time, as Dopamine's
fixed replay buffer reads it, on synthetic checkpoints written in the exact file format."""

import jax.numpy as jnp
import numpy as np
import pytest

import common as C
from synthetic import write_dqn_replay

CHECKPOINTS = range(6)


@pytest.fixture()
def run_dir(tmp_path):
    for n in CHECKPOINTS:  # every checkpoint has the same number of rows: 3 padding + 9, twice = 24
        write_dqn_replay(tmp_path, n, episodes=[9, 9], reward_offset=100.0 * n)  # rewards tell them apart
    return tmp_path


def stream(directory, resident=2, swap_every=100, seed=0):
    return C.DQNReplayStream(directory, list(CHECKPOINTS), resident, swap_every, seed, num_actions=3)


def checkpoints_in(ds: C.Dataset) -> set[int]:
    """Which checkpoints the resident rows came from (each checkpoint's rewards are offset by 100 n)."""
    reward = np.asarray(ds.reward)
    return {int(r // 100) for r in reward[reward > 0]}


def test_the_schedule_swaps_one_slot_at_a_time_and_visits_every_checkpoint(run_dir):
    s = stream(run_dir)
    sets = [s.schedule(i) for i in range(20)]
    assert all(len(set(x)) == 2 for x in sets)  # resident checkpoints are distinct
    assert all(sum(a != b for a, b in zip(x, y)) == 1 for x, y in zip(sets, sets[1:]))  # one slot per swap
    assert set().union(*map(set, sets)) == set(CHECKPOINTS)
    assert stream(run_dir).schedule(7) == sets[7]  # a function of the seed: a resumed run rebuilds it
    assert stream(run_dir, seed=1).schedule(7) != sets[7] or stream(run_dir, seed=1).schedule(0) != sets[0]


def test_the_resident_data_keep_their_shapes_and_follow_the_schedule(run_dir, monkeypatch):
    s = stream(run_dir)
    reads = []
    real = s._read
    monkeypatch.setattr(s, "_read", lambda n: reads.append(n) or real(n))
    first = s.at(0)
    s._prefetch[1][0].join()
    # The whole resident set at the start, then (in the background) the checkpoint of the next swap.
    assert reads == s.schedule(0) + [s.schedule(1)[0]]
    assert first.obs.shape == (48, 84, 84) and int(first.size) == 2 * 17  # 2 x (24 rows, 17 of them valid)
    assert s.at(99) is first  # no swap before swap_every steps
    for swap in range(1, 5):
        s._prefetch[1][0].join()  # the background read of the next checkpoint
        ds = s.at(100 * swap)
        assert ds.obs.shape == first.obs.shape and ds.valid.shape == first.valid.shape  # nothing to recompile
        assert checkpoints_in(ds) == set(s.schedule(swap))
        assert int(ds.size) == 34
    s._prefetch[1][0].join()
    assert len(reads) == 2 + 4 + 1  # each swap read exactly one checkpoint, in the background
    # The first `size` entries of valid are exactly the resident valid rows, with their batches intact.
    valid = np.asarray(ds.valid)[:int(ds.size)]
    assert len(set(valid)) == len(valid)
    b = ds.batch(jnp.asarray(valid))
    assert np.all(np.asarray(b.obs)[:, -1, 0, 0] > 0)  # no padding frame is ever the current one


def test_a_resumed_stream_rebuilds_the_resident_set(run_dir):
    walked = stream(run_dir)
    for step in range(0, 701, 100):
        if walked._prefetch:
            walked._prefetch[1][0].join()
        ds = walked.at(step)
    rebuilt = stream(run_dir).at(700)
    for a, b in zip((ds.obs, ds.reward, ds.mc_return, ds.valid), (rebuilt.obs, rebuilt.reward, rebuilt.mc_return,
                                                                    rebuilt.valid)):
        np.testing.assert_array_equal(a, b)
    assert ds.ident == rebuilt.ident != stream(run_dir).at(0).ident


def test_the_trainer_samples_only_resident_valid_rows_and_compiles_once(run_dir):
    s = stream(run_dir, swap_every=20)
    cfg = C.TrainConfig(num_steps=100, chunk_steps=20, batch_size=8, optimizer="adam", target_update_period=10,
                        probe_size=16, eval_every=0)
    net = C.NatureCNN(3)
    result = C.train_offline(net, s, C.DoubleDQN(0.99, clip_rewards=True), [C.Member(0, 1e-3)], cfg, progress=False)
    assert len([r for r in result.rows if r["metric"] == "loss"]) == 5
    fn = C.make_chunk_fn(net, C.DoubleDQN(0.99, clip_rewards=True), C.plain_gradient, "adam", 8, 20)
    assert fn._cache_size() == 1  # five resident sets, one compiled program
    with pytest.raises(ValueError, match="no order"):
        C.train_offline(net, s, C.DoubleDQN(0.99), [C.Member(0, 1e-3)], cfg, order=np.arange(4), progress=False)


def test_sampling_is_bounded_by_the_resident_valid_rows():
    # valid lists 3 real rows then padding; size 3: the sampled rows are only the real ones.
    obs = np.arange(8, dtype=np.float32)[:, None]
    ds = C.make_dataset(obs, np.zeros(8), np.ones(8), np.zeros(8), [1, 3, 5, 1, 1, 1], 2, 1)
    ds = ds.replace(size=jnp.asarray(3, jnp.int32))
    cfg = C.TrainConfig(num_steps=200, chunk_steps=200, batch_size=64, optimizer="adam", target_update_period=10,
                        probe_size=3, eval_every=0)
    seen = set()

    def spy(apply, params, target_params, batch, settings, key, loss_state=()):
        import jax

        jax.debug.callback(lambda o: seen.update(np.asarray(o)[:, 0].tolist()), batch.obs)
        return C.DoubleDQN(0.9)(apply, params, target_params, batch, settings, key)

    C.train_offline(C.MLP(2, (4,)), ds, spy, [C.Member(0, 1e-3)], cfg, progress=False)
    assert seen == {1.0, 3.0, 5.0}

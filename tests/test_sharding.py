"""The sweep axis shards over devices: a run on 4 (forced host) devices gives the same metrics as the
same run on one device within 1e-4 (the last bits differ), and so does a run whose members do
not divide evenly (3 members on 2 devices: the trainer pads with a copy and drops its rows), and
one whose members train in groups (common.call_size). Each configuration runs in its own process,
since JAX fixes the device count at start-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import json, jax, numpy as np
import common as C
rng = np.random.default_rng(0)
rows = 256
obs = rng.normal(size=(rows, 4)).astype(np.float32)
terminal = (np.arange(rows) % 8 == 7).astype(np.float32)
ds = C.make_dataset(obs, rng.integers(3, size=rows), rng.normal(size=rows), terminal, np.arange(rows - 1), 3, 1)
cfg = C.TrainConfig(num_steps=300, chunk_steps=100, batch_size=16, optimizer="adam", target_update_period=20,
                    probe_size=64, eval_every=0)
members = [C.Member(s, lr, columns={"lr": lr}) for s in (0, 1, 2) for lr in (1e-3, 1e-2)][:NUM_MEMBERS]
padded = NUM_MEMBERS + C.member_padding(NUM_MEMBERS)
groups = []
split_and_join = C.member_groups
C.member_groups = lambda bounds, sharding: (groups.append(bounds), split_and_join(bounds, sharding))[1]
C.GROUP_ABOVE_BYTES = GROUP_ABOVE_BYTES
train = lambda: C.train_offline(C.MLP(3, (16, 16)), ds, C.DoubleDQN(0.99), members, cfg, progress=False,
                                checkpoints=CHECKPOINTS)
result = train()
leaf = jax.tree_util.tree_leaves(result.state.params)[0]
sharding = C.member_sharding(padded)
again = train() if CHECKPOINTS else result  # a finished run, restored from its checkpoint
same_state = all(np.array_equal(C.to_host(a), C.to_host(b)) for a, b in zip(jax.tree_util.tree_leaves(result.state),
                                                                          jax.tree_util.tree_leaves(again.state)))
print(json.dumps({"devices": jax.device_count(), "padded": padded, "rows": result.rows, "members": leaf.shape[0],
                  "shards": 1 if sharding is None else len(sharding.device_set), "groups": groups[0],
                  "restored_rows": again.rows, "restored_state_equal": same_state}))
"""


def run(devices: int, members: int = 4, group_above: int = 1 << 20, checkpoints: Path | None = None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    program = (f"import jax; jax.config.update('jax_num_cpu_devices', {devices}); NUM_MEMBERS = {members}; "
               f"GROUP_ABOVE_BYTES = {group_above}; CHECKPOINTS = {str(checkpoints) if checkpoints else None!r}\n"
               + PROGRAM)
    proc = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_metrics(a_rows, b_rows):
    assert len(a_rows) == len(b_rows)
    for a, b in zip(a_rows, b_rows):
        assert {k: v for k, v in a.items() if k != "value"} == {k: v for k, v in b.items() if k != "value"}
        assert abs(a["value"] - b["value"]) <= 1e-4 * max(1.0, abs(a["value"])), (a, b)


def test_sharded_sweep_matches_single_device():
    single, sharded = run(1), run(4)
    assert single["devices"] == 1 and single["shards"] == 1
    assert sharded["devices"] == 4 and sharded["shards"] == 4  # 4 members, one per device
    assert single["members"] == sharded["members"] == 4  # the result is every member, on one device
    assert_same_metrics(single["rows"], sharded["rows"])


def test_members_that_do_not_divide_are_padded_and_the_copy_dropped():
    single, padded = run(1, members=3), run(2, members=3)
    assert padded["devices"] == 2 and padded["padded"] == 4 and padded["shards"] == 2
    assert single["members"] == padded["members"] == 3
    assert_same_metrics(single["rows"], padded["rows"])


def test_members_with_a_large_state_train_in_groups_with_the_same_metrics(tmp_path):
    # Every member's state counts as large (GROUP_ABOVE_BYTES = 0): 6 members on 2 devices train as
    # a group of 4 (2 per device) and one of 2, and match one call of all 6 within 1e-4. The
    # grouped run's checkpoint restores into its groups: a finished run returns the same rows and state.
    whole, grouped = run(2, members=6), run(2, members=6, group_above=0, checkpoints=tmp_path)
    assert whole["groups"] == [[0, 6]] and grouped["groups"] == [[0, 4], [4, 6]]
    assert whole["members"] == grouped["members"] == 6
    assert_same_metrics(whole["rows"], grouped["rows"])
    assert grouped["restored_rows"] == grouped["rows"] and grouped["restored_state_equal"]

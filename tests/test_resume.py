"""Resume and checkpoint identity: a killed run (SIGKILL at a random moment) resumes to exactly the
metrics of an uninterrupted one, for the offline trainer and for the online (tandem) loop; a
checkpoint is reused only by the run it belongs to; saves cost the same throughout a run."""

import dataclasses
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common as C

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Checkpoint identity: everything that decides the numbers, and nothing else
# ---------------------------------------------------------------------------------------------


def toy(reward_shift=0.0, rows=64):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(rows, 4)).astype(np.float32)
    action = rng.integers(3, size=rows)
    terminal = (np.arange(rows) % 8 == 7).astype(np.float32)
    return C.make_dataset(obs, action, (action == 1) + reward_shift, terminal, np.arange(rows - 1), 3, 1)


CFG = C.TrainConfig(num_steps=40, chunk_steps=20, batch_size=8, optimizer="adam", target_update_period=10,
                    probe_size=32, eval_every=0, checkpoint_seconds=0.0)


@dataclasses.dataclass(frozen=True)
class Penalised:
    """Double DQN plus ``settings["weight"]`` x the mean squared features (an auxiliary loss)."""

    power: int = 2

    def __call__(self, apply, params, target_params, batch, settings, key, loss_state=()):
        value, aux = C.DoubleDQN(0.99)(apply, params, target_params, batch, settings, key)
        return value + settings["weight"] * jnp.mean(jnp.abs(aux["features"]) ** self.power), aux


def run(tmp_path, ds=None, net=None, loss=None, members=None, cfg=CFG, order=None, timings=None):
    ds = ds if ds is not None else toy()
    return C.train_offline(net or C.MLP(3, (8,)), ds, loss or Penalised(),
                           members or [C.Member(0, 1e-3, settings={"weight": 0.1})], cfg, order=order,
                           checkpoints=tmp_path, progress=False, timings=timings)


def checkpoints(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_checkpoint_carries_the_seconds_its_training_took_over_every_run(tmp_path):
    saved = lambda: pickle.loads((tmp_path / "r" / "state.pkl").read_bytes())["progress"]["seconds"]
    first = C.Recorder(tmp_path / "r", {}, [{}], 0.0)
    first.started -= 100.0  # as if this run had trained for 100 s
    first.save({"w": jnp.zeros(2)}, {"chunks_done": 1})
    assert 100.0 <= saved() < 160.0
    second = C.Recorder(tmp_path / "r", {}, [{}], 0.0)
    second.resume()
    assert second.earlier_seconds == saved()
    second.started -= 50.0
    second.save({"w": jnp.zeros(2)}, {"chunks_done": 2})
    assert 150.0 <= saved() < 210.0  # both runs' time
    # A checkpoint written before the seconds were recorded: unknown, not zero, and it stays so.
    payload = pickle.loads((tmp_path / "r" / "state.pkl").read_bytes())
    del payload["progress"]["seconds"]
    (tmp_path / "r" / "state.pkl").write_bytes(pickle.dumps(payload))
    third, timings = C.Recorder(tmp_path / "r", {}, [{}], 0.0), C.Timings()
    third.resume()
    timings.note_resumed(third, "2 of 3 chunks")
    assert timings.resumed_seconds == {"r": None}
    third.save({"w": jnp.zeros(2)}, {"chunks_done": 3})
    assert saved() is None


def test_changing_nothing_resumes_and_changing_anything_redoes_the_run(tmp_path, capsys, monkeypatch):
    timings = C.Timings()
    first = run(tmp_path, timings=timings)
    assert len(checkpoints(tmp_path)) == 1 and timings.resumed == {}
    again = run(tmp_path, timings=timings)  # the same run: loaded, not redone
    assert again.rows == first.rows and "resuming" in capsys.readouterr().err
    assert timings.resumed == {checkpoints(tmp_path)[0]: "2 of 2 chunks"}  # what meta.json will say
    assert 0 <= timings.resumed_seconds[checkpoints(tmp_path)[0]] < 300  # recorded (a toy run: may round to 0)
    assert len(checkpoints(tmp_path)) == 1
    ds = toy()
    swapped = np.asarray(ds.valid).copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # the same rows, the same sum: another order
    changes = {
        "the dataset's contents": dict(ds=toy(reward_shift=1.0)),
        "the order's bytes": dict(order=swapped),
        "a member's seed": dict(members=[C.Member(1, 1e-3, settings={"weight": 0.1})]),
        "a member's learning rate": dict(members=[C.Member(0, 2e-3, settings={"weight": 0.1})]),
        "a member's setting": dict(members=[C.Member(0, 1e-3, settings={"weight": 0.2})]),
        "a member's target period": dict(members=[C.Member(0, 1e-3, target_update_period=5, settings={"weight": 0.1})]),
        "the auxiliary loss": dict(loss=Penalised(power=1)),
        "the network": dict(net=C.MLP(3, (8,), "elu")),
        "the training config": dict(cfg=dataclasses.replace(CFG, batch_size=16)),
        "the default target period": dict(cfg=dataclasses.replace(CFG, target_update_period=7)),
    }
    for what, change in changes.items():
        before = len(checkpoints(tmp_path))
        run(tmp_path, **change)
        assert len(checkpoints(tmp_path)) == before + 1, f"changing {what} reused a checkpoint"
        assert "resuming" not in capsys.readouterr().err, what
    # Editing the code of a loss (not its settings) changes the traced program, and so the identity
    # (as in a new process: the compiled programs of this one are dropped).
    monkeypatch.setattr(C, "huber", lambda x, delta=1.0: 0.5 * x**2)
    C.make_chunk_fn.cache_clear()
    jax.clear_caches()
    before = len(checkpoints(tmp_path))
    run(tmp_path)
    assert len(checkpoints(tmp_path)) == before + 1


def test_saves_append_only_new_rows_and_replace_a_state_of_constant_size(tmp_path, monkeypatch):
    sizes = []
    real = C.atomic_write

    def spy(path, write, suffix=".tmp"):
        real(path, write, suffix)
        if path.name == "state.pkl":
            with open(path.parent / "rows.jsonl") as f:
                sizes.append((path.stat().st_size, sum(1 for _ in f)))

    monkeypatch.setattr(C, "atomic_write", spy)
    cfg = dataclasses.replace(CFG, num_steps=200, chunk_steps=20)
    result = run(tmp_path, cfg=cfg)
    assert len(sizes) == 10  # one save per chunk (checkpoint_seconds 0)
    assert len({s for s, _ in sizes}) == 1  # the state file does not grow with the run
    rows_per_save = np.diff([0] + [n for _, n in sizes])
    assert rows_per_save[0] > rows_per_save[1] and len(set(rows_per_save[1:])) == 1  # only the new rows
    assert sizes[-1][1] == len(result.rows)


def test_a_kill_between_the_rows_append_and_the_state_write_loses_nothing(tmp_path):
    first = run(tmp_path, cfg=dataclasses.replace(CFG, num_steps=100))
    directory = tmp_path / checkpoints(tmp_path)[0]
    with open(directory / "rows.jsonl", "a") as f:  # rows of a save that never committed
        f.write(json.dumps({"metric": "stray"}) + "\n")
    again = run(tmp_path, cfg=dataclasses.replace(CFG, num_steps=100))
    assert again.rows == first.rows
    assert sum(1 for _ in open(directory / "rows.jsonl")) == len(first.rows)


# ---------------------------------------------------------------------------------------------
# SIGKILL at a random moment, then the same command again
# ---------------------------------------------------------------------------------------------

OFFLINE = """
import sys, time
import numpy as np
import common as C

def evaluate(net, params):  # slow enough that the parent can kill the run mid-way
    time.sleep(0.05)
    return C.Evaluator("bsuite/catch", 2)(net, params)

out = sys.argv[1]
ds = C.collect_dataset("bsuite/catch", 0.1, 600, seed=0, data_dir=out + "/data", progress=False)
cfg = C.TrainConfig(num_steps=1200, chunk_steps=40, early_chunk_steps=20, batch_size=16, optimizer="adam",
                    target_update_period=25, probe_size=64, eval_every=40, checkpoint_seconds=0.0)
members = [C.Member(s, lr, columns={"lr": lr}) for s in (0, 1) for lr in (1e-3, 1e-2)]
result = C.train_offline(C.MLP(3, (16, 16)), ds, C.DoubleDQN(0.99), members, cfg, evaluate=evaluate,
                         columns={"study": "t", "env": "bsuite/catch", "agent": "dqn"},
                         checkpoints=C.Path(out) / "checkpoints", progress=False)
C.write_metrics(C.Path(out), result.rows)
"""


def child(args, out: Path, *, kill_when=None) -> subprocess.CompletedProcess | None:
    """Runs a child to completion, or SIGKILLs it once ``kill_when()`` is true (a hang fails with
    the child's Python stacks)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANKRL_DATA_DIR": str(out / "data"), "PYTHONFAULTHANDLER": "1"}
    log = out / f"child_{time.time_ns()}.log"  # a file, not a pipe: a chatty child never blocks on it
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None
            if time.time() > deadline:
                proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's Python stack
                proc.wait()
                pytest.fail(f"child hung: {args}\n{log.read_text()[-4000:]}")
            time.sleep(0.01)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return subprocess.CompletedProcess(args, 0, log.read_text(), "")


def saved_progress(directory: Path, pattern: str):
    for path in directory.glob(pattern):
        try:
            with open(path, "rb") as f:
                return pickle.load(f)["progress"]
        except (OSError, EOFError, pickle.UnpicklingError):
            pass
    return None


def test_offline_run_killed_at_a_random_chunk_resumes_to_the_same_metrics(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    script = tmp_path / "train.py"
    script.write_text(OFFLINE)
    child([str(script), str(tmp_path / "a")], tmp_path / "a")  # uninterrupted
    target = random.Random().randint(2, 25)
    progress = lambda: saved_progress(tmp_path / "b" / "checkpoints", "*/state.pkl")
    killed = child([str(script), str(tmp_path / "b")], tmp_path / "b",
                   kill_when=lambda: (progress() or {}).get("chunks_done", 0) >= target)
    assert killed is None and not (tmp_path / "b" / "metrics.csv").exists(), "the run finished before the kill"
    child([str(script), str(tmp_path / "b")], tmp_path / "b")
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()


def test_tandem_run_killed_at_a_random_moment_resumes_to_the_same_metrics(tmp_path):
    args = [str(REPO / "exp_tandem.py"), "--preset", "smoke", "--checkpoint-seconds", "0", "--num-env-steps", "3200",
            "--eval-every", "800", "--out", "out"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    child(args, tmp_path / "a")
    target = random.Random().randint(1, 18) * 200  # a log point of the tandem or the forked program
    killed = child(args, tmp_path / "b", kill_when=lambda: _env_step(tmp_path / "b") >= target)
    assert killed is None, "the run finished before the kill"
    child(args, tmp_path / "b")
    assert (tmp_path / "a" / "out" / "metrics.csv").read_bytes() == (tmp_path / "b" / "out" / "metrics.csv").read_bytes()
    meta = lambda run: json.loads((tmp_path / run / "out" / "meta.json").read_text())
    assert "resumed" not in meta("a") and meta("b")["resumed"], "meta.json must say which programs were resumed"
    assert meta("b")["resumed_seconds"].keys() == meta("b")["resumed"].keys()
    assert all(v > 0 for v in meta("b")["resumed_seconds"].values()), "and what they had taken before the kill"


def _env_step(out: Path) -> int:
    """Environment steps (per seed) the tandem run has checkpointed so far, over its programs."""
    done = 0
    for path in (out / "out" / "checkpoints").glob("*/state.pkl"):
        try:
            with open(path, "rb") as f:
                done += pickle.load(f)["progress"]["env_step"]
        except (OSError, EOFError, pickle.UnpicklingError, KeyError):
            pass
    return done

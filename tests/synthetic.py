"""Synthetic metrics for the claim tests: tables built so that a claim must hold, must fail, or
must come out inconclusive or not testable. Rows go through metrics.csv's own format
(C.Metrics.from_rows), so the claims read them exactly as they read a real run."""

from __future__ import annotations

import gzip
import io
import zlib
from typing import Callable, Iterable, Sequence

import numpy as np

import common as C

STEPS = np.asarray([0, 100, 200, 400, 700, 1000] + list(range(2000, 20001, 2000)))  # probe and evaluation steps


def rows_for(columns: dict, values: dict[str, Callable[[int], float]], steps: Iterable[int] = STEPS) -> list[dict]:
    """One run's rows: ``values[metric](step)`` at every step."""
    return [{**columns, "step": int(t), "metric": metric, "value": float(f(int(t)))}
            for t in steps for metric, f in values.items()]


def metrics(rows: list[dict]) -> C.Metrics:
    return C.Metrics.from_rows(rows)


def noise(*key) -> float:
    """A fixed pseudo-random number in [-1, 1) for a key (so a table is the same every time)."""
    return float(np.random.default_rng(zlib.crc32(repr(key).encode())).uniform(-1, 1))


LRS = [float(x) for x in np.geomspace(1e-5, 1e-1, 12)]


def sweep(fn: Callable[..., dict[str, float]], *, envs=("bsuite/catch",), seeds: int | Sequence[int] = 5,
          agents=("dqn",), batch_sizes=(32,), lrs=LRS, study: str = "lr_sweep", units: int = 64) -> C.Metrics:
    """A learning-rate sweep: ``fn(agent=, batch=, i=, lr=, seed=, step=)`` gives each run's metrics
    (i: the learning rate's index). ``seeds``: how many (0, 1, ...), or the seeds in the order they are written."""
    rows = []
    for env in envs:
        for agent in agents:
            for batch in batch_sizes:
                for i, lr in enumerate(lrs):
                    for seed in range(seeds) if isinstance(seeds, int) else seeds:
                        columns = {"study": study, "env": env, "agent": agent, "seed": seed, "lr": lr,
                                   "batch_size": batch}
                        values = fn(agent=agent, batch=batch, i=i, lr=lr, seed=seed)
                        rows += rows_for(columns, {k: (lambda t, f=f: f(t)) for k, f in values.items()})
                        rows.append({**columns, "step": 0, "metric": "units", "value": float(units)})
    return metrics(rows)


def write_gz_npy(path, array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    with gzip.open(path, "wb") as f:
        f.write(buf.getvalue())


def write_dqn_replay(directory, n, episodes, invalid_range=(), history=4, add_count=None, last_terminal=True,
                     reward_offset=0.0):
    """Writes one checkpoint in Dopamine's layout: history-1 zero transitions before each episode.
    Frame pixels hold (episode, step) so tests can see which frame landed where."""
    obs, action, reward, terminal = [], [], [], []
    for e, length in enumerate(episodes):
        for _ in range(history - 1):
            obs.append(np.zeros((84, 84), np.uint8)), action.append(0), reward.append(0.0), terminal.append(0)
        for t in range(length):
            obs.append(np.full((84, 84), 10 * (e + 1) + t, np.uint8))
            ends = t == length - 1 and (last_terminal or e < len(episodes) - 1)
            action.append(t % 3), reward.append(reward_offset + t + 1), terminal.append(int(ends))
    files = {"observation": np.stack(obs), "action": np.asarray(action, np.int32),
             "reward": np.asarray(reward, np.float32), "terminal": np.asarray(terminal, np.uint8)}
    for k, v in files.items():
        write_gz_npy(directory / f"$store$_{k}_ckpt.{n}.gz", v)
    write_gz_npy(directory / f"add_count_ckpt.{n}.gz", np.asarray(len(obs) if add_count is None else add_count))
    write_gz_npy(directory / f"invalid_range_ckpt.{n}.gz", np.asarray(invalid_range, np.int64))
    return files

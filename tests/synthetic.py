"""Synthetic metrics for the claim tests: tables built so that a claim must hold, must fail, or
must come out inconclusive or not testable. Rows go through metrics.csv's own format
(C.Metrics.from_rows), so the claims read them exactly as they read a real run."""

from __future__ import annotations

import zlib
from typing import Callable, Iterable

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


def sweep(fn: Callable[..., dict[str, float]], *, envs=("bsuite/catch",), seeds: int = 5, agents=("dqn",),
          batch_sizes=(32,), lrs=LRS, study: str = "lr_sweep", units: int = 64) -> C.Metrics:
    """A learning-rate sweep: ``fn(agent=, batch=, i=, lr=, seed=, step=)`` gives each run's metrics
    (i: the learning rate's index)."""
    rows = []
    for env in envs:
        for agent in agents:
            for batch in batch_sizes:
                for i, lr in enumerate(lrs):
                    for seed in range(seeds):
                        columns = {"study": study, "env": env, "agent": agent, "seed": seed, "lr": lr,
                                   "batch_size": batch}
                        values = fn(agent=agent, batch=batch, i=i, lr=lr, seed=seed)
                        rows += rows_for(columns, {k: (lambda t, f=f: f(t)) for k, f in values.items()})
                        rows.append({**columns, "step": 0, "metric": "units", "value": float(units)})
    return metrics(rows)

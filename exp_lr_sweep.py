"""The 12-learning-rate sweep: three phases of learning, rank against learning rate, dead ReLU
units, TD against behaviour cloning, the minibatch size, and offline policy selection by rank
(Sections 4.1, 7 and 10, Appendices A.7-A.9 of Gulcehre et al. 2022).

Figures: 2/4/32 (srank and return per learning rate, phases marked), 5 (final srank against
learning rate at three training lengths), 11/12 (dead units along training, DQN), 13 (BC over the
same learning rates), 14 (dead units against srank), 19 (offline policy selection, the paper's
simple regret), 20 (improvement of the selected policy over the median candidate), 31 (the best
learning rate along training), 33 (srank against return at batch 32 and 256), 34 (srank against
return per environment).

    make exp_lr_sweep                         # cpu preset: bsuite catch, cartpole, mountain_car
    python exp_lr_sweep.py --preset long      # the paper's bsuite protocol, DQN and BC sweeps: 1e6 steps, 5 seeds
    python exp_lr_sweep.py --preset paper --data-dir /data/dqn_replay   # the paper's Atari sweep
    python exp_lr_sweep.py --plot-only        # redraw the figures and claims from results/exp_lr_sweep/
    python exp_lr_sweep.py --help             # every setting, with the chosen preset's value
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

import common as C

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------

SubStudy = Literal["dqn", "bc", "batch_size"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Offline DQN (and BC) trained with 12 learning rates: phases, rank, dead units, batch size, policy selection."""

    env: tuple[str, ...]
    """Environment ids (bsuite/<game>, minatar/<game>, atari/<Game>)."""
    seeds: int
    """Training seeds per learning rate."""
    lr_min: float
    """Smallest learning rate of the log-spaced sweep (the paper's range is lost from its text)."""
    lr_max: float
    """Largest learning rate of the log-spaced sweep."""
    num_lrs: int
    """Number of learning rates (12 in the paper)."""
    num_steps: int
    """Gradient steps per run."""
    chunk_steps: int
    """Gradient steps per compiled call; the probe metrics are taken after each."""
    early_chunk_steps: int
    """Finer chunks over the first chunk, so the abrupt early collapse is resolved (0: none)."""
    eval_every: int
    """Gradient steps between online evaluations."""
    eval_episodes: int
    """Greedy evaluation episodes per member and evaluation."""
    batch_size: int
    """Minibatch size of the sweep (bsuite 32, Atari 256: Appendix A.12)."""
    target_update_period: int
    """Gradient steps between target-network updates."""
    dataset_noise: float
    """bsuite/MinAtar collection: probability that the behaviour agent's action is replaced by a random one."""
    dataset_size: int
    """bsuite/MinAtar collection: transitions in the dataset."""
    large_batch_size: int = 256
    """The minibatch study's other batch size (Fig. 33): the larger one, except at ``paper``, whose sweep
    is the paper's DQN-256 and whose other size is its DQN-32."""
    large_batch_stride: int = 3
    """The minibatch study trains every large_batch_stride-th learning rate of the sweep at large_batch_size."""
    large_batch_steps: int = 20_000
    """Gradient steps of the minibatch study's runs. The paper ran DQN-32 for 100M steps and DQN-256 for
    20M (Section 3, Fig. 33): a run at batch 256 is five times shorter than one at batch 32."""
    studies: tuple[SubStudy, ...] = ("dqn", "bc", "batch_size")
    """What to run: the DQN sweep, the BC sweep over the same rates and data, the minibatch study."""
    gamma: float = 0.99
    """Discount."""
    optimizer: C.Optimizer = "adam"
    """Optimizer (the paper's: Adam)."""
    probe_size: int = 512
    """States in the fixed probe batch for srank and dead units (the paper's rank batch)."""
    short_fraction: float = 0.1
    """The shorter training length of Fig. 5, 19 and 20, as a fraction of the run (the paper: 2M of 20M steps)."""
    checkpoint_seconds: float = 60.0
    """Wall seconds between checkpoints: a killed run resumes from the last one."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""
    replay_checkpoints: tuple[int, ...] = (0,)
    """Atari: which DQN Replay checkpoints to read (a run has 50)."""
    replay_resident: int = 4
    """Atari: DQN Replay checkpoints on the device at a time (Dopamine's fixed replay buffer; ~7.1 GB each)."""
    replay_swap_every: int = 100_000
    """Atari: gradient steps between swaps of one resident checkpoint for another."""

    def check(self) -> None:
        C.require(self.checkpoint_seconds >= 0, "--checkpoint-seconds must be >= 0")
        C.check_env_ids(self.env)
        C.require_positive(self, "replay_resident", "replay_swap_every")
        C.require_positive(self, "seeds", "num_lrs", "num_steps", "chunk_steps", "eval_every", "eval_episodes",
                           "batch_size", "target_update_period", "lr_min", "lr_max", "probe_size",
                           "large_batch_size", "large_batch_stride", "large_batch_steps")
        C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        C.require(self.lr_min <= self.lr_max, f"--lr-min ({self.lr_min}) must not exceed --lr-max ({self.lr_max})")
        C.require(0 < self.short_fraction < 1, f"--short-fraction must be in (0, 1) (got {self.short_fraction})")
        C.require_multiple(self, "num_steps", "chunk_steps")
        C.require_multiple(self, "eval_every", "chunk_steps")
        C.require(self.num_steps // self.eval_every >= 2, "a run needs at least two evaluations after the start")
        if "batch_size" in self.studies:
            C.require_multiple(self, "large_batch_steps", "eval_every")
            C.require(self.large_batch_steps // self.eval_every >= 2,
                      "--large-batch-steps: a run needs at least two evaluations after the start")
        if self.early_chunk_steps:
            C.require_multiple(self, "chunk_steps", "early_chunk_steps")


BSUITE = ("bsuite/catch", "bsuite/cartpole", "bsuite/mountain_car")

PRESETS = {
    # The paper's bsuite hyperparameters (batch 32, 2x64 ReLU, Adam, discount 0.99) with 1e5 gradient
    # steps instead of 1e6. The target network is updated every 100 steps, Acme's DQN default (the
    # paper's bsuite value is not stated). The batch-256 runs take a fifth of the steps, the paper's
    # ratio (DQN-256-20M against DQN-32-100M).
    "cpu": Config(env=BSUITE, seeds=5, num_steps=100_000, chunk_steps=1_000, early_chunk_steps=100, eval_every=5_000,
                  eval_episodes=10, lr_min=1e-5, lr_max=1e-1, num_lrs=12, batch_size=32, target_update_period=100,
                  dataset_noise=0.1, dataset_size=50_000, large_batch_steps=20_000),
    # The paper's bsuite protocol: 1e6 gradient steps, 5 seeds, the DQN and BC sweeps (1.8e8
    # member-steps each) and the batch-256 runs at 2e5 steps (the paper's ratio) on every third rate.
    # 114.5 min in one run on a 2-core AMD EPYC with AVX-512 at 5d79bf4 (142 on one with AVX2), over
    # the hour; the README's run-times table has the times.
    "long": Config(env=BSUITE, seeds=5, num_steps=1_000_000, chunk_steps=5_000, early_chunk_steps=100,
                   eval_every=50_000, eval_episodes=10, lr_min=1e-5, lr_max=1e-1, num_lrs=12, batch_size=32,
                   target_update_period=100, dataset_noise=0.1, dataset_size=50_000, large_batch_steps=200_000),
    # The paper's long-run Atari sweep (DQN-256-20M) on its nine online-policy-selection games; the
    # minibatch study compares with DQN-32 (the paper's DQN-32-100M).
    "paper": Config(env=tuple(f"atari/{g}" for g in ("BeamRider", "DemonAttack", "DoubleDunk", "IceHockey",
                                                     "MsPacman", "Pooyan", "RoadRunner", "Robotank", "Zaxxon")),
                    seeds=5, num_steps=20_000_000, chunk_steps=10_000, early_chunk_steps=1_000, eval_every=500_000,
                    eval_episodes=10, lr_min=1e-5, lr_max=1e-2, num_lrs=12, batch_size=256, large_batch_size=32,
                    target_update_period=2_500, dataset_noise=0.0, dataset_size=0, replay_checkpoints=tuple(range(50)),
                    large_batch_steps=100_000_000),
    "smoke": Config(env=("bsuite/catch",), seeds=2, num_steps=2_000, chunk_steps=500, early_chunk_steps=100,
                    eval_every=500, eval_episodes=4, lr_min=1e-4, lr_max=1e-1, num_lrs=4, batch_size=32,
                    target_update_period=100, dataset_noise=0.1, dataset_size=2_000, large_batch_size=64,
                    large_batch_stride=2, large_batch_steps=1_000),
}


def learning_rates(cfg: Config) -> list[float]:
    return [float(lr) for lr in np.geomspace(cfg.lr_min, cfg.lr_max, cfg.num_lrs)]


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> dict:
    """Per environment: one fixed dataset. Offline double DQN with a ReLU network (Huber loss,
    Adam, a target network) at 12 learning rates x seeds, one vmapped program; behaviour cloning
    (cross-entropy of the logged action, the same network) at the same rates on the same data;
    and DQN at another minibatch size on every few of the rates, for ``large_batch_steps`` (the
    paper trained batch 256 for a fifth of batch 32's steps). Every chunk the probe metrics on a
    fixed batch of 512 dataset states; every ``eval_every`` steps the greedy policy's return and
    value error."""
    rows = []
    for env_id in cfg.env:
        with timings("collect"):
            ds = C.replay_data(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size,
                               data_dir=cfg.data_dir, checkpoints=cfg.replay_checkpoints,
                               resident=cfg.replay_resident, swap_every=cfg.replay_swap_every)
        net = C.default_network(env_id, ds.num_actions, activation="relu")  # bsuite: a 2x64 MLP
        dqn = C.DoubleDQN(gamma=cfg.gamma, clip_rewards=env_id.startswith("atari/"))
        evaluate = C.Evaluator(env_id, episodes=cfg.eval_episodes, gamma=cfg.gamma)  # greedy, seeded by EVAL_SEED

        def sweep(agent: str, loss: C.Loss, rates: list[float], batch_size: int, num_steps: int) -> list[dict]:
            train = C.TrainConfig(num_steps=num_steps, chunk_steps=cfg.chunk_steps,
                                  early_chunk_steps=cfg.early_chunk_steps, batch_size=batch_size,
                                  optimizer=cfg.optimizer, target_update_period=cfg.target_update_period,
                                  probe_size=cfg.probe_size, eval_every=cfg.eval_every,
                                  checkpoint_seconds=cfg.checkpoint_seconds)
            members = [C.Member(seed=s, learning_rate=lr, columns={"lr": lr, "batch_size": batch_size})
                       for s in range(cfg.seeds) for lr in rates]
            return C.train_offline(net, ds, loss, members, train, evaluate=evaluate,
                                   columns={"study": "lr_sweep", "env": env_id, "agent": agent},
                                   checkpoints=out / "checkpoints", timings=timings).rows

        if "dqn" in cfg.studies:
            rows += sweep("dqn", dqn, learning_rates(cfg), cfg.batch_size, cfg.num_steps)
        if "bc" in cfg.studies:
            rows += sweep("bc", C.BehaviourCloning(), learning_rates(cfg), cfg.batch_size, cfg.num_steps)
        if "batch_size" in cfg.studies:
            rows += sweep("dqn", dqn, learning_rates(cfg)[::cfg.large_batch_stride], cfg.large_batch_size,
                          cfg.large_batch_steps)
    C.write_metrics(out, rows)
    return {"learning_rates": learning_rates(cfg)}


def parts(cfg: Config) -> list[C.Part]:
    """The sub-studies ``cfg`` runs, for the README's presets table."""
    rates = f"{cfg.num_lrs} learning rates"
    every = {"dqn": C.Part("dqn", cfg.env, cfg.seeds, cfg.num_steps, rates),
             "bc": C.Part("bc", cfg.env, cfg.seeds, cfg.num_steps, rates),
             "batch_size": C.Part("batch_size", cfg.env, cfg.seeds, cfg.large_batch_steps,
                                  f"{len(learning_rates(cfg)[::cfg.large_batch_stride])} of the learning rates at "
                                  f"batch {cfg.large_batch_size}")}
    return [every[s] for s in cfg.studies]

# ------------------------------------------------------------------------------------------------
# The study's own pieces: offline policy selection
# ------------------------------------------------------------------------------------------------


def selection_score(returns: np.ndarray, criterion: np.ndarray) -> float:
    """Normalised score of picking the candidate with the largest ``criterion``: (R_pick - R_min) /
    (R_max - R_min), so 1 = the best candidate and 0 = the worst (what the paper's Fig. 19 plots as
    simple regret, after Konyushkova et al. 2021). Ties in the criterion (srank and dead units are
    integers) are broken at random, i.e. the tied candidates' scores are averaged. NaN if all
    returns are equal."""
    lo, hi = np.nanmin(returns), np.nanmax(returns)
    tied = criterion == np.nanmax(criterion)
    return float(np.mean((returns[tied] - lo) / (hi - lo))) if hi > lo else float("nan")


def random_selection_score(returns: np.ndarray) -> float:
    """Expected score of picking a candidate uniformly at random."""
    lo, hi = np.nanmin(returns), np.nanmax(returns)
    return float(np.nanmean((returns - lo) / (hi - lo))) if hi > lo else float("nan")


def improvement_over_median(returns: np.ndarray, criterion: np.ndarray) -> float:
    """Fig. 20: the percentage by which the candidate picked by ``criterion`` (ties averaged)
    returns more than the median candidate, relative to |median|; NaN where the median is 0."""
    median = np.nanmedian(returns)
    picked = np.mean(returns[criterion == np.nanmax(criterion)])
    return float(100 * (picked - median) / abs(median)) if median != 0 else float("nan")


RULES = {"srank": lambda srank, dead, ret: srank, "dead units": lambda srank, dead, ret: -dead,
         "online": lambda srank, dead, ret: ret}  # online: the oracle that evaluates every candidate


# ------------------------------------------------------------------------------------------------
# Analysis, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def sweep_of(m: C.Metrics, env: str, agent: str = "dqn", batch_size: int | None = None) -> dict:
    """The rows of one sweep: ``agent`` at ``batch_size`` (default: the sweep's own, the size run
    with the most learning rates; the minibatch study trains every few of them at the other)."""
    if batch_size is None:
        sizes = sorted(m.values("batch_size", env=env, agent=agent))
        batch_size = max(sizes, key=lambda b: len(m.values("lr", env=env, agent=agent, batch_size=b)))
    return {"env": env, "agent": agent, "batch_size": batch_size, "study": "lr_sweep"}


def rates(m: C.Metrics, where: dict) -> list[float]:
    return sorted(m.values("lr", **where))


def shared_rates(m: C.Metrics, a: dict, b: dict) -> list[float]:
    """The learning rates both sweeps ran (the minibatch study's size runs every third rate, and at
    ``paper`` it is the sweep's size that does)."""
    return sorted(set(rates(m, a)) & set(rates(m, b)))


def rank_return_rhos(m: C.Metrics, where: dict, lrs: list[float] | None = None) -> np.ndarray:
    """Per seed, Spearman's rho between final srank and final return over the learning rates ``lrs``
    (default: all of the sweep's): the statistic of the claims on Figs. 33 and 34."""
    lrs = rates(m, where) if lrs is None else lrs
    srank = np.stack([C.final_values(m, "srank", lr=lr, **where) for lr in lrs])
    ret = np.stack([C.final_values(m, "return", lr=lr, **where) for lr in lrs])
    return np.asarray([C.spearman(s, r) for s, r in zip(srank.T, ret.T)])


def grid(m: C.Metrics, where: dict, metric: str, step: int | None = None) -> np.ndarray:
    """(learning rates, seeds): the final value (C.final_values) or, with ``step``, the value there."""
    if step is None:
        return np.stack([C.final_values(m, metric, lr=lr, **where) for lr in rates(m, where)])
    return np.stack([m.at_step(step, lr=lr, metric=metric, **where) for lr in rates(m, where)])


def eval_steps(m: C.Metrics, where: dict) -> np.ndarray:
    return np.asarray([s for s in m.steps(metric="return", **where) if s > 0])


def short_step(m: C.Metrics, where: dict, cfg: Config) -> int:
    steps = eval_steps(m, where)
    return int(steps[np.argmin(np.abs(steps - cfg.short_fraction * steps[-1]))])


def phases(m: C.Metrics, where: dict) -> dict[tuple[float, int], C.Phases]:
    """The phases of every (learning rate, seed) run."""
    out = {}
    for lr in rates(m, where):
        steps, curves = m.curves(lr=lr, metric="srank", **where)
        for seed, curve in zip(sorted(m.values("seed", lr=lr, metric="srank", **where)), curves):  # curves' order
            if np.isfinite(curve).all():
                out[lr, seed] = C.detect_phases(steps, curve)
    return out


def selection_scores(m: C.Metrics, where: dict, step: int) -> dict[str, np.ndarray]:
    """Per seed, the normalised score of picking by srank, by dead units and at random at ``step``."""
    ret, srank, dead = (grid(m, where, k, step) for k in ("return", "srank", "dead_units"))
    seeds = range(ret.shape[1])
    return {"srank": np.asarray([selection_score(ret[:, s], srank[:, s]) for s in seeds]),
            "dead units": np.asarray([selection_score(ret[:, s], -dead[:, s]) for s in seeds]),
            "random": np.asarray([random_selection_score(ret[:, s]) for s in seeds])}


def best_lr(returns: np.ndarray, lrs: np.ndarray) -> float:
    """The learning rate with the best return (the geometric mean of those tied for best)."""
    tied = lrs[returns == np.nanmax(returns)]
    return float(np.exp(np.mean(np.log(tied))))


def srank_centroid(srank: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """Per seed, the srank-weighted mean of log10(lr): where along the learning rates the rank sits."""
    w = np.maximum(srank, 0)
    return (np.log10(lrs)[:, None] * w).sum(axis=0) / w.sum(axis=0)


# ------------------------------------------------------------------------------------------------
# Claims: the paper's words, a per-seed statistic, a rule stated before the data
# ------------------------------------------------------------------------------------------------

DEAD_ONSET, COLLAPSE_ONSET = 0.5, 0.1  # "many dead units": >= 50% of the layer; "catastrophic": srank <= 10% of its start
UNITS_BOUND = 0.5  # dead units vs srank: only runs with at least half the units alive (the srank <= live bound is slack)
BATCH_MARGIN = 0.2  # "depends on the minibatch size": rho(srank, return) differs by more than 0.2 between sizes


def claim_inverted_u(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        srank = grid(m, sweep_of(m, env), "srank")  # (rates, seeds), the rates ascending
        small, middle, large = (srank[part].mean(axis=0) for part in np.array_split(np.arange(len(srank)), 3))
        # A seed whose srank ended the same at every rate (all collapsed to 1, say) has no shape to test.
        flat = np.ptp(srank, axis=0) == 0
        above_small, above_large = np.where(flat, np.nan, middle - small), np.where(flat, np.nan, middle - large)
        if np.isfinite(above_small).sum() < 2:
            evidence.append(C.Evidence(env, "not testable here", note="srank ended the same at every learning rate"))
            continue
        # Two things: low at the small rates and low at the large ones. A concave fit alone also holds for
        # a plateau that falls at the large rates (high at the small ones).
        evidence.append(C.every_part(env, {
            "low at the small rates": C.directional(env, above_small, "greater"),
            "low at the large rates": C.directional(env, above_large, "greater")}))
    return C.Claim(
        "lr_sweep.inverted_u", "Final srank is low for small and for large learning rates: its distribution over "
        "the learning rates has a Gaussian-like shape (Section 4.1, Fig. 5).",
        "per seed, with the learning rates in thirds (smallest, middle, largest): mean final srank over the middle "
        "third minus (1) over the smallest third, (2) over the largest third (none where srank ended the same at "
        "every rate)", "held if both > 0 (one-sided sign-flip tests, p < 0.05); not held if either < 0 by the same "
        "test; the value shown is the deciding part's", tuple(evidence))


def claim_srank_shift(m: C.Metrics, envs: list[str], cfg: Config) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        lrs = np.asarray(rates(m, where))
        end = int(eval_steps(m, where)[-1])
        shift = srank_centroid(grid(m, where, "srank", end), lrs) - \
            srank_centroid(grid(m, where, "srank", short_step(m, where, cfg)), lrs)
        evidence.append(C.directional(env, shift, "less"))
    return C.Claim(
        "lr_sweep.srank_shift", "The distribution of rank shifts towards low learning rates as the agents train "
        "longer (Section 4.1, Fig. 5).", f"per seed, the srank-weighted mean of log10(lr) at the end minus at "
        f"{cfg.short_fraction:.0%} of training", "held if the shift is < 0 (one-sided sign-flip test, p < 0.05); "
        "not held if > 0", tuple(evidence))


def claim_dead_units_rise(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        dead = grid(m, where, "dead_units")
        if np.nanmax(dead) == 0:
            evidence.append(C.Evidence(env, "not testable here", note="no unit died at any learning rate"))
            continue
        x = np.log10(rates(m, where))
        evidence.append(C.directional(env, [C.spearman(x, col) for col in dead.T], "greater"))
    return C.Claim(
        "lr_sweep.dead_units_rise", "Increasing the learning rate increases the number of dead units (Section 7, "
        "Figs. 11 and 12).", "per seed, Spearman's rho between log10(lr) and the final number of dead units",
        "held if rho > 0 (one-sided sign-flip test, p < 0.05); not held if < 0", tuple(evidence))


def claim_dead_units_srank(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        dead, srank, units = grid(m, where, "dead_units"), grid(m, where, "srank"), C.layer_width(m, where)
        rhos, pairs = [], []
        for d, s in zip(dead.T, srank.T):
            keep = d <= UNITS_BOUND * units
            rhos.append(C.spearman(d[keep], s[keep]) if keep.sum() >= 4 else np.nan)
            pairs.append((d[keep], s[keep]))
        if not np.isfinite(rhos).any():
            evidence.append(C.Evidence(env, "not testable here", note=why_undefined(
                pairs, ("dead units", "srank"), min_runs=4, among="among the runs with half their units alive")))
            continue
        evidence.append(C.directional(env, np.asarray(rhos), "less", null=-C.STRONG_CORRELATION))
    return C.Claim(
        "lr_sweep.dead_units_srank", "There is a strong correlation between the number of dead ReLU units of the "
        "penultimate layer and its effective rank (Section 7, Fig. 14).",
        "per seed, Spearman's rho between final dead units and final srank over the learning rates whose runs keep "
        "at least half of their units alive (where the bound srank <= live units does not force it)",
        f"held if rho < -{C.STRONG_CORRELATION} (one-sided sign-flip test against -{C.STRONG_CORRELATION}, "
        f"p < 0.05); not held if rho > -{C.STRONG_CORRELATION} by the same test", tuple(evidence))


def claim_phases(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        runs = phases(m, sweep_of(m, env))
        seeds = sorted({s for _, s in runs})
        if not any(p.early_collapse for p in runs.values()):
            evidence.append(C.Evidence(env, "not testable here", note="no run collapsed early"))
            continue
        # Per seed: 1 if some learning rate shows the abrupt early collapse and then the rise, else -1.
        shown = [1.0 if any(p.rise for (lr, s), p in runs.items() if s == seed) else -1.0 for seed in seeds]
        evidence.append(C.directional(env, shown, "greater", note=f"{sum(v > 0 for v in shown)}/{len(shown)} seeds"))
    return C.Claim(
        "lr_sweep.phases", "A Q-network's srank first collapses abruptly, within a handful of gradient updates "
        "(phase 1), then rises (phase 2) (Section 4.1, Fig. 2).",
        f"per seed: +1 if at some learning rate srank falls to <= {C.EARLY_DROP:.0%} of its start within "
        f"{C.EARLY_STEPS:,} steps and later climbs to >= {C.RISE_FACTOR}x and >= {C.RISE_UNITS} units above that "
        "minimum, else -1", "held if the mean score is > 0 by the one-sided sign-flip test (p < 0.05, which "
        "with 5 seeds takes all 5 showing it); not held if it is < 0 by the same test (none of 5)", tuple(evidence))


def claim_early_vs_late_dead(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        runs = phases(m, where)
        late = [(lr, s) for (lr, s), p in runs.items() if p.late_collapse]
        if not late:
            evidence.append(C.Evidence(env, "not testable here", note="no run entered phase 3 (a late collapse)"))
            continue
        early_dead, late_dead = [], []  # per seed, as fractions of the layer
        units = C.layer_width(m, where)
        for seed in sorted({s for _, s in runs}):
            early = [m.at_step(p.minimum[0], lr=lr, seed=seed, metric="dead_units", **where)[0]
                     for (lr, s), p in runs.items() if s == seed and p.early_collapse]
            final = [C.final_values(m, "dead_units", lr=lr, seed=seed, **where)[0] for lr, s in late if s == seed]
            both = early and final
            early_dead.append(np.mean(early) / units if both else np.nan)
            late_dead.append(np.mean(final) / units if both else np.nan)
        early_dead, late_dead = np.asarray(early_dead), np.asarray(late_dead)
        # Three things: few dead units in phase 1, many in phase 3 ("many": DEAD_ONSET of the layer, as in
        # td_vs_bc), and more in phase 3 than in phase 1. The difference alone holds when both are many.
        evidence.append(C.every_part(env, {
            "few in phase 1": C.directional(env, early_dead, "less", null=DEAD_ONSET),
            "many in phase 3": C.directional(env, late_dead, "greater", null=DEAD_ONSET),
            "more in phase 3": C.directional(env, late_dead - early_dead, "greater",
                                             note=f"{len(late)} late collapses")}))
    return C.Claim(
        "lr_sweep.early_vs_late_dead", "In phase 1 the effective rank and the number of dead units are low, so the "
        "early collapse is not caused by dead units; in phase 3 the number of dead units is high (Section 7).",
        "per seed, as fractions of the layer: (1) the mean dead units at the early minimum of its runs with an "
        "early collapse; (2) the mean final dead units of its runs with a late collapse; (3) (2) minus (1)",
        f"held if (1) < {DEAD_ONSET:g}, (2) > {DEAD_ONSET:g} and (3) > 0 (one-sided sign-flip tests, p < 0.05); "
        "not held if any is on the other side by the same test; the value shown is the deciding part's",
        tuple(evidence))


def onset_index(dead: np.ndarray, srank: np.ndarray, start: np.ndarray, units: int) -> float:
    """The index of the smallest learning rate whose run ends with many dead units or a collapsed
    srank (len(rates) if none does)."""
    hit = (dead >= DEAD_ONSET * units) | (srank <= COLLAPSE_ONSET * start)
    return float(np.argmax(hit)) if hit.any() else float(len(hit))


def claim_td_vs_bc(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        if not m.has(env=env, agent="bc"):
            evidence.append(C.Evidence(env, "not testable here", note="the BC sweep was not run"))
            continue
        onsets = {}
        for agent in ("dqn", "bc"):
            where = sweep_of(m, env, agent)
            dead, srank, start = grid(m, where, "dead_units"), grid(m, where, "srank"), grid(m, where, "srank", 0)
            units = C.layer_width(m, where)
            onsets[agent] = np.asarray([onset_index(d, s, s0, units) for d, s, s0 in zip(dead.T, srank.T, start.T)])
        n = len(rates(m, sweep_of(m, env)))
        if (onsets["dqn"] == n).all() and (onsets["bc"] == n).all():
            evidence.append(C.Evidence(env, "not testable here", note="neither loss collapsed at any learning rate"))
            continue
        evidence.append(C.directional(env, onsets["bc"] - onsets["dqn"], "greater", note="in learning-rate steps"))
    return C.Claim(
        "lr_sweep.td_vs_bc", "Models with TD-learning losses have catastrophic rank collapses and many dead units at "
        "lower learning rates than BC (Section 7, Figs. 11-13).",
        f"per seed, the index of the smallest learning rate at which BC ends with >= {DEAD_ONSET:.0%} dead units or "
        f"srank <= {COLLAPSE_ONSET:.0%} of its start, minus DQN's (the number of rates if none does)",
        "held if > 0 (one-sided sign-flip test, p < 0.05); not held if < 0", tuple(evidence))


def claim_selection(m: C.Metrics, envs: list[str], cfg: Config) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        scores = selection_scores(m, where, short_step(m, where, cfg))
        gain = scores["srank"] - scores["random"]
        note = "" if np.isfinite(gain).sum() >= 2 else "every learning rate returned the same"
        evidence.append(C.directional(env, gain, "greater", note=note))
    return C.Claim(
        "lr_sweep.selection", "Selecting the learning rate with the highest effective rank gives a good simple regret "
        "after the usual (shorter) training (Section 10, Fig. 19).",
        f"per seed at {cfg.short_fraction:.0%} of training: the normalised return of the rate with the highest srank "
        "(1 = best candidate, 0 = worst) minus that of a random pick", "held if > 0 (one-sided sign-flip test, "
        "p < 0.05); not held if < 0", tuple(evidence))


def claim_selection_reversal(m: C.Metrics, envs: list[str], cfg: Config) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        short, long = (selection_scores(m, where, step) for step in (short_step(m, where, cfg),
                                                                      int(eval_steps(m, where)[-1])))
        # A reversal is two things: srank picks better early, dead units pick better at the end. Their
        # difference of differences alone holds when dead units merely catch up (both picks perfect).
        evidence.append(C.every_part(env, {
            "srank better early": C.directional(env, short["srank"] - short["dead units"], "greater"),
            "dead units better at the end": C.directional(env, long["dead units"] - long["srank"], "greater")}))
    return C.Claim(
        "lr_sweep.selection_reversal", "The number of dead units is a poor selection rule after the usual training "
        "but becomes a good one after long training, where srank has collapsed for most learning rates "
        "(Section 10).", f"per seed, the score of picking the highest srank minus that of picking the fewest dead "
        f"units: (1) at {cfg.short_fraction:.0%} of training; (2) the reverse at the end", "held if both > 0 "
        "(one-sided sign-flip tests, p < 0.05); not held if either < 0 by the same test; the value shown is the "
        "deciding part's", tuple(evidence))


def claim_best_lr_falls(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        lrs, steps = np.asarray(rates(m, where)), eval_steps(m, where)
        rhos = []
        for s in range(grid(m, where, "return", int(steps[0])).shape[1]):
            best = [best_lr(grid(m, where, "return", int(t))[:, s], lrs) for t in steps]
            rhos.append(C.spearman(steps, np.log10(best)))
        note = "" if np.isfinite(rhos).sum() >= 2 else "the best learning rate never changed"
        evidence.append(C.directional(env, rhos, "less", note=note))
    return C.Claim(
        "lr_sweep.best_lr_falls", "As offline DQN is trained longer, the learning rate with the best online "
        "performance goes down (Appendix A.7, Fig. 31).", "per seed, Spearman's rho between the evaluation step and "
        "log10 of the best learning rate there", "held if rho < 0 (one-sided sign-flip test, p < 0.05); not held "
        "if > 0", tuple(evidence))


def claim_rank_return(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        where = sweep_of(m, env)
        rhos = rank_return_rhos(m, where)
        pairs = list(zip(grid(m, where, "srank").T, grid(m, where, "return").T))
        note = "" if np.isfinite(rhos).sum() >= 2 else why_undefined(pairs, ("srank", "the return"))
        evidence.append(C.directional(env, rhos, "greater", note=note))
    return C.Claim(
        "lr_sweep.rank_return", "With ReLU networks, a DQN agent's effective rank and its performance correlate "
        "significantly on most games (Appendix A.9, Fig. 34).", "per seed, Spearman's rho between final srank and "
        "final return over the learning rates", "held if rho > 0 (one-sided sign-flip test, p < 0.05); not held if "
        "< 0", tuple(evidence))


def why_undefined(pairs: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, str], min_runs: int = 3,
                  among: str = "") -> str:
    """Why a per-seed correlation over the learning rates is undefined, named by side: a collapsed srank
    (1 at every rate) is not the same finding as a return that never changed."""
    reasons = []
    for x, y in pairs:
        finite = np.isfinite(x) & np.isfinite(y)
        x, y = x[finite], y[finite]
        flat = next((name for name, v in zip(names, (x, y)) if len(v) and np.ptp(v) == 0), None)
        reason = (f"fewer than {min_runs} runs" if len(x) < min_runs
                  else f"{flat} ended the same at every learning rate" if flat else "")
        if reason and reason not in reasons:
            reasons.append(reason)
    return " or ".join(reasons) + (f" {among}" if among and reasons else "")


def claim_batch_size(m: C.Metrics, envs: list[str]) -> C.Claim:
    evidence = []
    for env in envs:
        sizes = sorted(m.values("batch_size", env=env, agent="dqn"))
        if len(sizes) < 2:
            evidence.append(C.Evidence(env, "not testable here", note="one batch size was run"))
            continue
        small, large = (sweep_of(m, env, "dqn", b) for b in sizes[:2])
        shared = shared_rates(m, small, large)
        difference = rank_return_rhos(m, small, shared) - rank_return_rhos(m, large, shared)
        evidence.append(C.two_sided(env, difference, BATCH_MARGIN, "different",
                                    note=f"batch {sizes[0]} - batch {sizes[1]}, {len(shared)} rates"))
    return C.Claim(
        "lr_sweep.batch_size", "The correlation between rank and performance found in a narrow setting depends on "
        "the minibatch size and the learning rate together (Section 7, Figs. 1 and 33).",
        "per seed, Spearman's rho(final srank, final return) over the shared learning rates at the small batch "
        "minus at the large batch", "held if the 95% interval of the difference excludes 0 and is not inside "
        f"+-{BATCH_MARGIN}; not held if it lies within +-{BATCH_MARGIN} (the same correlation at both sizes)",
        tuple(evidence))


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    envs = m.values("env", agent="dqn")
    return [claim_inverted_u(m, envs), claim_srank_shift(m, envs, cfg), claim_dead_units_rise(m, envs),
            claim_dead_units_srank(m, envs), claim_phases(m, envs), claim_early_vs_late_dead(m, envs),
            claim_td_vs_bc(m, envs), claim_selection(m, envs, cfg), claim_selection_reversal(m, envs, cfg),
            claim_best_lr_falls(m, envs), claim_rank_return(m, envs), claim_batch_size(m, envs)]


# ------------------------------------------------------------------------------------------------
# Figures, from metrics.csv alone: one function per figure
# ------------------------------------------------------------------------------------------------


def lr_colors(plt, n: int):
    return plt.cm.viridis(np.linspace(0, 0.95, n))


def panels(plt, n: int, rows: int = 1, height: float = 3.4):
    return plt.subplots(rows, n, figsize=(4.2 * n, height * rows), squeeze=False)


def plot_phases(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 2/4/32: srank and return per learning rate, phases marked on the srank curves."""
    envs = m.values("env", agent="dqn")
    fig, axes = panels(plt, len(envs), 2, 3.2)
    for j, env in enumerate(envs):
        where = sweep_of(m, env)
        runs = phases(m, where)
        for lr, color in zip(rates(m, where), lr_colors(plt, len(rates(m, where)))):
            steps, curves = m.curves(lr=lr, metric="srank", **where)
            C.plot_band(axes[0, j], np.maximum(steps, 1), curves, f"lr={lr:.2g}", color)
            for (rate, _), p in runs.items():
                if rate == lr and p.early_collapse:
                    axes[0, j].plot(max(p.minimum[0], 1), p.minimum[1], "v", color=color, ms=3, alpha=0.6)
                if rate == lr and p.late_collapse:
                    axes[0, j].plot(steps[-1], curves[:, -1].mean(), "x", color=color, ms=6, mew=1.5)
            C.plot_band(axes[1, j], *m.curves(lr=lr, metric="return", **where), None, color)
        axes[0, j].set(xscale="log", title=env, ylabel="srank (probe batch of 512)")
        axes[1, j].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0, -1].legend(ncol=2, title="▼ early collapse (a seed)   ✕ late collapse", loc="upper left",
                       bbox_to_anchor=(1.02, 1), fontsize=6)  # beside the panels, off the curves
    fig.suptitle(f"Fig. 2/4/32: offline double DQN (ReLU) per learning rate ({C.seeds_note(m, env=envs[0])})")
    C.save_figure(fig, out, "fig02_srank_and_return_per_lr")


def plot_srank_vs_lr(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 5: final srank against learning rate at three training lengths."""
    envs = m.values("env", agent="dqn")
    fig, axes = panels(plt, len(envs))
    for j, env in enumerate(envs):
        where = sweep_of(m, env)
        steps = eval_steps(m, where)
        lengths = sorted({short_step(m, where, cfg), int(steps[len(steps) // 2]), int(steps[-1])})
        for length, shade in zip(lengths, np.linspace(0.35, 0.9, len(lengths))):
            mean, err = C.mean_and_stderr(grid(m, where, "srank", length).T)
            axes[0, j].errorbar(rates(m, where), mean, err, marker="o", ms=3, capsize=2, color=plt.cm.magma(1 - shade),
                                label=f"{length:,} steps")
        axes[0, j].set(xscale="log", xlabel="learning rate", ylabel="srank", title=env)
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 5: srank against learning rate at three training lengths ({C.seeds_note(m, env=envs[0])})")
    C.save_figure(fig, out, "fig05_srank_vs_lr")


def plot_dead_units(plt, m: C.Metrics, out: Path, agent: str, name: str, title: str) -> None:
    """Fig. 11/12 (DQN) and Fig. 13 (BC): dead units and srank along training per learning rate."""
    envs = m.values("env", agent=agent)
    fig, axes = panels(plt, len(envs), 2, 3.0)
    for j, env in enumerate(envs):
        where = sweep_of(m, env, agent)
        for lr, color in zip(rates(m, where), lr_colors(plt, len(rates(m, where)))):
            for i, metric in enumerate(("dead_units", "srank")):
                steps, curves = m.curves(lr=lr, metric=metric, **where)
                C.plot_band(axes[i, j], np.maximum(steps, 1), curves, f"lr={lr:.2g}" if i == 0 else None, color)
        axes[0, j].set(xscale="log", ylabel=f"dead units (of {C.layer_width(m, where)})", title=env)
        axes[1, j].set(xscale="log", xlabel="gradient steps", ylabel="srank")
    axes[0, -1].legend(ncol=2, fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))  # off the curves
    fig.suptitle(f"{title} ({C.seeds_note(m, env=envs[0], agent=agent)})")
    C.save_figure(fig, out, name)


def plot_dead_vs_srank(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 14: dead units against srank after training, every learning rate and seed."""
    envs = m.values("env", agent="dqn")
    claim = claim_dead_units_srank(m, envs)
    fig, axes = panels(plt, len(envs))
    for j, env in enumerate(envs):
        where = sweep_of(m, env)
        srank, dead = grid(m, where, "srank"), grid(m, where, "dead_units")
        for k, color in enumerate(lr_colors(plt, len(srank))):
            axes[0, j].scatter(dead[k], srank[k], color=color, s=12)
        axes[0, j].axvline(UNITS_BOUND * C.layer_width(m, where), color="0.5", ls=":", lw=0.8)
        axes[0, j].set(xlabel="dead units (dotted: the claim's bound)", ylabel="srank")
        axes[0, j].set_title(f"{env}\n{claim.on(env)}", fontsize=8)
    fig.suptitle("Fig. 14: final dead units against final srank (colour = learning rate, dark = small; one dot per "
                 "seed; claim: per-seed Spearman left of the bound)", y=1.06)
    C.save_figure(fig, out, "fig14_dead_units_vs_srank")


def plot_policy_selection(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 19: the normalised score of each selection rule at the short and the full length."""
    envs = m.values("env", agent="dqn")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), squeeze=False)
    rules = ("srank", "dead units", "random")
    width = 0.8 / len(rules)
    for j, label in enumerate(("short", "end")):
        for k, rule in enumerate(rules):
            means, errs, counts = [], [], []
            for env in envs:
                where = sweep_of(m, env)
                step = short_step(m, where, cfg) if label == "short" else int(eval_steps(m, where)[-1])
                scores = selection_scores(m, where, step)[rule]
                mean, err = C.mean_and_stderr(scores)
                means.append(mean), errs.append(err), counts.append((int(np.isfinite(scores).sum()), len(scores)))
            x = np.arange(len(envs)) + k * width
            axes[0, j].bar(x, means, width, yerr=errs, capsize=2, label=rule)
            for xi, mean, (n, seeds) in zip(x, means, counts):  # say what a bar cannot: its seeds, a true 0
                note = ", ".join(s for s in (f"n={n}" if n < seeds else "", "0" if n and mean == 0 else "") if s)
                if note:
                    axes[0, j].text(xi, 0.02, note, ha="center", va="bottom", fontsize=5, rotation=90)
        axes[0, j].set_xticks(np.arange(len(envs)) + width, [C.short_env(e) for e in envs])
        axes[0, j].set(ylim=(0, 1.05), ylabel="normalised score (1 = best lr)",
                       title=f"{'after ' + format(cfg.short_fraction, '.0%') + ' of training' if label == 'short' else 'at the end'}")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("Fig. 19: offline policy selection over the learning rates: the chosen rate's normalised return "
                 "(1 - the paper's simple regret: 1 = the best rate, 0 = the worst)\nmean over the seeds in which "
                 f"every rate did not return the same (n where fewer than {len(m.values('seed', env=envs[0]))}), "
                 "bars = standard error", fontsize=9, y=1.05)
    C.save_figure(fig, out, "fig19_offline_policy_selection")


def plot_improvement(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 20: percentage improvement of the selected learning rate over the median candidate."""
    envs = m.values("env", agent="dqn")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), squeeze=False)
    width = 0.8 / len(RULES)
    for j, label in enumerate(("short", "end")):
        for k, (rule, criterion) in enumerate(RULES.items()):
            means, errs = [], []
            for env in envs:
                where = sweep_of(m, env)
                step = short_step(m, where, cfg) if label == "short" else int(eval_steps(m, where)[-1])
                ret, srank, dead = (grid(m, where, x, step) for x in ("return", "srank", "dead_units"))
                values = [improvement_over_median(ret[:, s], criterion(srank[:, s], dead[:, s], ret[:, s]))
                          for s in range(ret.shape[1])]
                mean, err = C.mean_and_stderr(np.asarray(values))
                means.append(mean), errs.append(err)
            axes[0, j].bar(np.arange(len(envs)) + k * width, means, width, yerr=errs, capsize=2,
                           label=f"{rule}{' (oracle)' if rule == 'online' else ''}")
        axes[0, j].axhline(0, color="0.4", lw=0.8)
        axes[0, j].set_xticks(np.arange(len(envs)) + width, [C.short_env(e) for e in envs])
        axes[0, j].set(ylabel="% over the median learning rate",
                       title=f"after {cfg.short_fraction:.0%} of training" if label == "short" else "at the end")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("Fig. 20: return of the selected learning rate relative to the median candidate (% of |median|: "
                 f"large where the median return is near 0; {C.seeds_note(m, env=envs[0])})", fontsize=9, y=1.03)
    C.save_figure(fig, out, "fig20_selection_improvement")


def plot_best_lr(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 31: the best learning rate by return along training (per seed, then the median)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for env in m.values("env", agent="dqn"):
        where = sweep_of(m, env)
        lrs, steps = np.asarray(rates(m, where)), eval_steps(m, where)
        best = np.asarray([[best_lr(grid(m, where, "return", int(t))[:, s], lrs)
                            for s in range(len(m.values("seed", **where)))] for t in steps])  # (steps, seeds)
        ax.plot(steps, np.exp(np.median(np.log(best), axis=1)), marker="o", ms=3, label=env)
        ax.fill_between(steps, best.min(axis=1), best.max(axis=1), alpha=0.15)
    ax.set(yscale="log", xlabel="gradient steps", ylabel="best learning rate\n(median over seeds; band: range)")
    ax.legend()
    seeds = len(m.values("seed", agent="dqn"))
    fig.suptitle(f"Fig. 31: the best learning rate by online return along training\n({seeds} seeds; tied rates: "
                 "their geometric mean)", fontsize=10)
    C.save_figure(fig, out, "fig31_best_lr_over_training")


def plot_rank_vs_return(plt, m: C.Metrics, out: Path, by_batch: bool) -> None:
    """Fig. 34 (one batch size, per environment) and Fig. 33 (batch sizes side by side): final srank
    against final return, one dot per learning rate and seed."""
    envs = m.values("env", agent="dqn")
    claim = claim_batch_size(m, envs) if by_batch else claim_rank_return(m, envs)
    fig, axes = panels(plt, len(envs))
    for j, env in enumerate(envs):
        sizes = sorted(m.values("batch_size", env=env, agent="dqn")) if by_batch else [sweep_of(m, env)["batch_size"]]
        # Fig. 33's claim compares the sizes over the rates both ran: the others are faded.
        shared = shared_rates(m, *(sweep_of(m, env, "dqn", b) for b in sizes[:2])) if len(sizes) > 1 else None
        for b, marker in zip(sizes, "os^"):
            where = sweep_of(m, env, "dqn", b)
            srank, ret = grid(m, where, "srank"), grid(m, where, "return")
            colors = lr_colors(plt, len(learning_rates_of(m, env)))
            index = {lr: i for i, lr in enumerate(learning_rates_of(m, env))}
            for k, lr in enumerate(rates(m, where)):
                axes[0, j].scatter(srank[k], ret[k], color=colors[index[lr]], marker=marker, s=14,
                                   alpha=1.0 if shared is None or lr in shared else 0.25,
                                   label=f"batch {b}" if k == 0 else None)
        axes[0, j].set(xlabel="final srank", ylabel="final return")
        axes[0, j].set_title(f"{env}\n{claim.on(env)}", fontsize=8)
        axes[0, j].legend(fontsize=6)
    name, title = (("fig33_rank_vs_return_batch_size", "Fig. 33: srank against return at two minibatch sizes (faded: "
                    "rates only the sweep ran; claim: per-seed Spearman, small batch minus large)")
                   if by_batch else ("fig34_rank_vs_return_relu", "Fig. 34: srank against return, ReLU DQN (claim: "
                                     "per-seed Spearman over the learning rates)"))
    fig.suptitle(f"{title}\ncolour = learning rate (dark = small), one dot per seed", fontsize=10, y=1.12)
    C.save_figure(fig, out, name)


def learning_rates_of(m: C.Metrics, env: str) -> list[float]:
    return rates(m, sweep_of(m, env))


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    plot_phases(plt, m, out)
    plot_srank_vs_lr(plt, m, cfg, out)
    plot_dead_units(plt, m, out, "dqn", "fig11_dead_units", "Fig. 11/12: dead ReLU units and srank, offline DQN")
    if m.has(agent="bc"):
        plot_dead_units(plt, m, out, "bc", "fig13_bc_dead_units", "Fig. 13: behaviour cloning over the same "
                        "learning rates and data")
    plot_dead_vs_srank(plt, m, out)
    plot_policy_selection(plt, m, cfg, out)
    plot_improvement(plt, m, cfg, out)
    plot_best_lr(plt, m, out)
    plot_rank_vs_return(plt, m, out, by_batch=False)
    if len(m.values("batch_size", agent="dqn")) > 1:
        plot_rank_vs_return(plt, m, out, by_batch=True)


STUDY = C.Study("exp_lr_sweep", __doc__.split("\n\n")[0], PRESETS, run, claims, plot, parts=parts)

if __name__ == "__main__":
    C.main(STUDY)

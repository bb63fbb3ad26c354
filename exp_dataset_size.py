"""How the amount and the quality of the data shape rank and performance (Sections 4.1 and 4.2,
Appendix A.5; Figures 4, 6 and 29 of Gulcehre et al. 2022).

Figures: 6 (srank, return and dead units along training for 5% to 100% of one dataset, and the
agreement between the srank ordering and the return ordering of the fractions), 4 (srank and return
on datasets of several qualities, each beside its behaviour policy's level, and the phase each run
ends in), 29 (value error against srank per dataset quality).

    make exp_dataset_size                     # cpu preset: MinAtar breakout and space_invaders; bsuite qualities
    python exp_dataset_size.py --preset paper --data-dir /data/dqn_replay   # Atari Asterix, Zaxxon
    python exp_dataset_size.py --plot-only    # redraw from results/exp_dataset_size/metrics.csv
    python exp_dataset_size.py --help         # every setting, with the chosen preset's value

Data quality, as in the RL Unplugged bsuite recipe: the behaviour agent (an online DQN, the one
collect_dataset trains) has its action replaced by a random one with probability 0, 0.1, 0.3 or 0.5;
a weak behaviour is the same agent (with action noise ``weak_noise``) whose training stopped after
``weak_learning_fraction`` of the collection (it then keeps acting with what it had learned).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Literal

import numpy as np

import common as C

SubStudy = Literal["size", "quality"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Offline double DQN on 5%..100% of one dataset, and on datasets of several qualities."""

    env: tuple[str, ...]
    """Environments of the dataset-size study (bsuite/<game>, minatar/<game>, atari/<Game>)."""
    seeds: int
    """Training seeds per configuration."""
    fractions: tuple[float, ...]
    """Fractions of the dataset's transitions to train on (nested prefixes of one seeded order)."""
    learning_rate: float
    """Adam learning rate of the dataset-size study."""
    num_steps: int
    """Gradient steps per run of the dataset-size study."""
    chunk_steps: int
    """Gradient steps per compiled call; the probe metrics are taken after each."""
    early_chunk_steps: int
    """Finer chunks over the first chunk, so the early collapse is resolved (0: none)."""
    eval_every: int
    """Gradient steps between online evaluations."""
    eval_episodes: int
    """Greedy evaluation episodes per member and evaluation."""
    batch_size: int
    """Minibatch size."""
    target_update_period: int
    """Gradient steps between target-network updates in the dataset-size study."""
    dataset_noise: float
    """Collection of the dataset-size study's data: probability of a random action in the behaviour policy."""
    dataset_size: int
    """Transitions in the dataset-size study's locally collected dataset (the 100% dataset)."""
    quality_env: tuple[str, ...] = ("bsuite/cartpole", "bsuite/mountain_car")
    """Environments of the data-quality study."""
    quality_noises: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)
    """Action-noise levels of the data-quality study's datasets (the RL Unplugged bsuite recipe)."""
    weak_learning_fraction: float = 0.1
    """The weak behaviour policy learns during this fraction of its collection only."""
    weak_noise: float = 0.1
    """Probability of a random action in the weak behaviour policy (the size study's dataset_noise
    is 0 at ``paper``, where its data are DQN Replay's)."""
    quality_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    """Learning rates of the data-quality study (phases depend on them too)."""
    quality_steps: int = 50_000
    """Gradient steps per run of the data-quality study."""
    quality_target_update_period: int = 100
    """Gradient steps between target-network updates in the data-quality study (bsuite: the other
    bsuite studies' 100, Acme's default, at every preset)."""
    quality_dataset_size: int = 50_000
    """Transitions in each of the data-quality study's datasets (the bsuite studies' 50k at cpu, long
    and paper: the size study's ``dataset_size``, 1e6 at ``long`` and DQN Replay at ``paper``, is not
    the quality study's)."""
    studies: tuple[SubStudy, ...] = ("size", "quality")
    """What to run: the dataset-size study and the data-quality study."""
    gamma: float = 0.99
    """Discount."""
    optimizer: C.Optimizer = "adam"
    """Optimizer."""
    probe_size: int = 512
    """States in the fixed probe batch."""
    checkpoint_seconds: float = 60.0
    """Wall seconds between checkpoints: a killed run resumes from the last one."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""
    replay_checkpoints: tuple[int, ...] = (0,)
    """Atari: which DQN Replay checkpoints to load."""

    def check(self) -> None:
        C.require(self.checkpoint_seconds >= 0, "--checkpoint-seconds must be >= 0")
        C.check_env_ids((*self.env, *self.quality_env))
        C.require(not any(e.startswith("atari/") for e in self.quality_env),
                  "--quality-env: the data-quality study collects its datasets: use bsuite/ or minatar/ ids")
        C.require_positive(self, "seeds", "learning_rate", "num_steps", "chunk_steps", "eval_every", "eval_episodes",
                           "batch_size", "target_update_period", "probe_size", "quality_lrs", "quality_steps",
                           "quality_target_update_period", "quality_dataset_size")
        C.require_fraction(self, "fractions", "weak_learning_fraction")
        C.require(all(0 <= n <= 1 for n in (*self.quality_noises, self.weak_noise)),
                  "--quality-noises and --weak-noise must be in [0, 1]")
        # The run lengths and the size study's data are checked only for the sub-studies that run (as
        # exp_activation does), so a quality-only run is not refused over the size study's length or data.
        if "size" in self.studies:
            C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        for study, steps in (("size", "num_steps"), ("quality", "quality_steps")):
            if study in self.studies:
                C.require_multiple(self, steps, "chunk_steps")
                C.require_multiple(self, steps, "eval_every")
        C.require_multiple(self, "eval_every", "chunk_steps")
        if self.early_chunk_steps:
            C.require_multiple(self, "chunk_steps", "early_chunk_steps")


FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)

PRESETS = {
    # MinAtar (image observations, the MinAtar CNN) with locally collected 50k-transition datasets,
    # 2e4 steps per run. Batch 32, Adam 3e-4 (the paper's bsuite rate), discount 0.99; the target
    # network is updated every 1,000 steps (Atari's 2,500, scaled with the run). The quality study
    # runs on bsuite (the 2x64 MLP, 5e4 steps, 4 learning rates, target updates every 100 steps).
    "cpu": Config(env=("minatar/breakout", "minatar/space_invaders"), seeds=5, num_steps=20_000, chunk_steps=500,
                  early_chunk_steps=100, eval_every=2_000, eval_episodes=8, fractions=FRACTIONS, learning_rate=3e-4,
                  batch_size=32, target_update_period=1_000, dataset_noise=0.1, dataset_size=50_000),
    # MinAtar at 1e6 gradient steps (the paper's bsuite length; for a GPU) and the quality study at bsuite's 1e6
    # gradient steps on its 50k datasets (alone, --studies quality, 53.7 min on 2 AVX-512 cores at 500ca6d:
    # `make exp_dataset_size-long`).
    "long": Config(env=("minatar/breakout", "minatar/space_invaders"), seeds=5, num_steps=1_000_000, chunk_steps=5_000,
                   early_chunk_steps=100, eval_every=100_000, eval_episodes=10, fractions=FRACTIONS,
                   learning_rate=3e-4, batch_size=32, target_update_period=2_500, dataset_noise=0.1,
                   dataset_size=1_000_000, quality_steps=1_000_000),
    "paper": Config(env=("atari/Asterix", "atari/Zaxxon"), seeds=5, num_steps=2_000_000, chunk_steps=10_000,
                    early_chunk_steps=1_000, eval_every=100_000, eval_episodes=10, fractions=FRACTIONS,
                    learning_rate=3e-5, batch_size=256, target_update_period=2_500, dataset_noise=0.0, dataset_size=0,
                    replay_checkpoints=(0, 1, 2, 3), quality_steps=1_000_000),
    "smoke": Config(env=("bsuite/catch",), seeds=2, num_steps=600, chunk_steps=200, early_chunk_steps=100,
                    eval_every=200, eval_episodes=2, fractions=(0.05, 0.5, 1.0), learning_rate=3e-4, batch_size=32,
                    target_update_period=100, dataset_noise=0.1, dataset_size=2_000, quality_env=("bsuite/catch",),
                    quality_noises=(0.0, 0.5), quality_lrs=(3e-4, 3e-3), quality_steps=600,
                    quality_dataset_size=2_000),
}


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> None:
    """Offline double DQN with a ReLU network (Huber loss, Adam, target network); every chunk the
    probe metrics on 512 dataset states, every ``eval_every`` steps the greedy return and value
    error.

    Size: per environment, one dataset; its transitions in one seeded random order; an agent
    trained on fraction f samples only the first f of that order, so the subsets are nested and
    the same for every seed (as with one subsampling seed in the paper). All fractions x seeds are
    one vmapped program.

    Quality: per environment and dataset (each noise level, and the weak behaviour), one program
    of learning rates x seeds; the dataset's own episode return (the behaviour level) is recorded
    beside it."""
    rows = []
    if "size" in cfg.studies:
        for env_id in cfg.env:
            with timings("collect"):
                ds = C.offline_dataset(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size,
                                       data_dir=cfg.data_dir, checkpoints=cfg.replay_checkpoints)
            order = np.asarray(ds.valid)[np.random.default_rng(C.SUBSAMPLE_SEED).permutation(len(ds))]
            members = [C.Member(seed=s, learning_rate=cfg.learning_rate, columns={"fraction": f},
                                data_size=max(cfg.batch_size, int(round(f * len(ds)))))
                       for s in range(cfg.seeds) for f in cfg.fractions]
            rows += train(cfg, out, timings, env_id, ds, members, cfg.num_steps, cfg.target_update_period,
                          {"study": "size"}, order)
    if "quality" in cfg.studies:
        for env_id in cfg.quality_env:
            datasets = [(noise, 1.0) for noise in cfg.quality_noises] + [(cfg.weak_noise, cfg.weak_learning_fraction)]
            for noise, learned in datasets:
                with timings("collect"):
                    ds = C.collect_dataset(env_id, noise, cfg.quality_dataset_size, C.DATA_SEED,
                                           cfg=C.CollectConfig(learning_fraction=learned))
                columns = {"study": "quality", "noise": noise, "behaviour_training": learned}
                rows.append({**columns, "env": env_id, "agent": "behaviour", "seed": 0, "step": 0, "metric": "return",
                             "value": float(C.episode_returns(ds).mean())})
                members = [C.Member(seed=s, learning_rate=lr, columns={"lr": lr})
                           for s in range(cfg.seeds) for lr in cfg.quality_lrs]
                rows += train(cfg, out, timings, env_id, ds, members, cfg.quality_steps,
                              cfg.quality_target_update_period, columns)
    C.write_metrics(out, rows)


def train(cfg: Config, out: Path, timings: C.Timings, env_id: str, ds: C.Dataset, members: list[C.Member],
          steps: int, target_update_period: int, columns: dict, order: np.ndarray | None = None) -> list[dict]:
    net = C.default_network(env_id, ds.num_actions, activation="relu")
    train = C.TrainConfig(num_steps=steps, chunk_steps=cfg.chunk_steps, early_chunk_steps=cfg.early_chunk_steps,
                          batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                          target_update_period=target_update_period, probe_size=cfg.probe_size,
                          eval_every=cfg.eval_every, checkpoint_seconds=cfg.checkpoint_seconds)
    return C.train_offline(net, ds, C.DoubleDQN(gamma=cfg.gamma, clip_rewards=env_id.startswith("atari/")), members,
                           train, order=order, evaluate=C.Evaluator(env_id, cfg.eval_episodes, gamma=cfg.gamma),
                           columns={**columns, "env": env_id, "agent": "dqn"}, checkpoints=out / "checkpoints",
                           timings=timings).rows


def parts(cfg: Config) -> list[C.Part]:
    """The sub-studies ``cfg`` runs, for the README's presets table."""
    every = {"size": C.Part("size", cfg.env, cfg.seeds, cfg.num_steps, f"{len(cfg.fractions)} dataset fractions"),
             "quality": C.Part("quality", cfg.quality_env, cfg.seeds, cfg.quality_steps,
                               f"{len(cfg.quality_noises) + 1} datasets x {len(cfg.quality_lrs)} learning rates")}
    return [every[s] for s in cfg.studies]

# ------------------------------------------------------------------------------------------------
# Analysis, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def fractions(m: C.Metrics, env: str) -> list[float]:
    return sorted(m.values("fraction", env=env, study="size"))


def ordering_agreement(m: C.Metrics, env: str) -> tuple[np.ndarray, np.ndarray]:
    """(evaluation steps, tau[seed, step]): Kendall's tau between the fractions' srank and their
    return, per seed, at every evaluation after the start."""
    from scipy.stats import kendalltau

    where = {"env": env, "study": "size"}
    steps = np.asarray([s for s in m.steps(metric="return", **where) if s > 0])
    srank = np.stack([[m.at_step(t, fraction=f, metric="srank", **where) for f in fractions(m, env)] for t in steps])
    ret = np.stack([[m.at_step(t, fraction=f, metric="return", **where) for f in fractions(m, env)] for t in steps])
    tau = np.full((srank.shape[2], len(steps)), np.nan)  # (seeds, steps)
    for i in range(len(steps)):
        for s in range(srank.shape[2]):
            if np.ptp(srank[i, :, s]) > 0 and np.ptp(ret[i, :, s]) > 0:
                tau[s, i] = kendalltau(srank[i, :, s], ret[i, :, s]).statistic
    return steps, tau


QUALITY_GOOD = (0.0, 1.0)  # (noise, behaviour_training): the best data, a fully trained behaviour without noise


def datasets(m: C.Metrics, env: str) -> list[tuple[float, float]]:
    where = {"env": env, "study": "quality", "agent": "dqn"}
    pairs = {(n, b) for n, b in zip(m.data["noise"][m.mask(**where)], m.data["behaviour_training"][m.mask(**where)])}
    return sorted(pairs, key=lambda p: (-p[1], p[0]))  # trained behaviours by noise, then the weak ones


def quality_where(env: str, data: tuple[float, float]) -> dict:
    return {"env": env, "study": "quality", "agent": "dqn", "noise": data[0], "behaviour_training": data[1]}


def weak_of(m: C.Metrics, env: str) -> tuple[float, float] | None:
    weak = [d for d in datasets(m, env) if d[1] < 1.0]
    return weak[0] if weak else None


def stuck_in_phase_one(m: C.Metrics, where: dict) -> np.ndarray:
    """Per seed, the fraction of the learning rates whose run ends in phase 1: its srank collapsed
    early and never rose again (a run with no early collapse is in no phase, so it counts as not in phase 1)."""
    stuck = []
    for lr in sorted(m.values("lr", **where)):
        steps, curves = m.curves(lr=lr, metric="srank", **where)
        stuck.append([C.detect_phases(steps, c).final_phase == 1 if np.isfinite(c).all() else np.nan for c in curves])
    return np.nanmean(np.asarray(stuck, np.float64), axis=0)


def srank_and_value_error(m: C.Metrics, where: dict, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(srank, value error) at every evaluation after the start, over the learning rates (and
    seeds, unless ``seed`` is given)."""
    s, v = [], []
    for lr in sorted(m.values("lr", **where)):
        for seed_ in [seed] if seed is not None else sorted(m.values("seed", lr=lr, **where)):
            steps, error = m.curves(lr=lr, seed=seed_, metric="value_error", **where)
            keep = steps > 0
            s += [m.at_step(int(t), lr=lr, seed=seed_, metric="srank", **where)[0] for t in steps[keep]]
            v += list(error[0, keep])
    return np.asarray(s), np.asarray(v)


def srank_value_error_correlation(m: C.Metrics, where: dict) -> np.ndarray:
    """Per seed, Spearman's rho between srank and value error over every learning rate and
    evaluation after the start."""
    return np.asarray([C.spearman(*srank_and_value_error(m, where, seed)) for seed in sorted(m.values("seed", **where))])


# ------------------------------------------------------------------------------------------------
# Claims
# ------------------------------------------------------------------------------------------------

TAU_AGREE = 0.5  # orderings "correspond" at Kendall tau >= 0.5 (75% of the pairs in the same order)


def claim_smallest_fraction(m: C.Metrics, metric: str) -> C.Claim:
    evidence = []
    for env in m.values("env", study="size"):
        small, full = fractions(m, env)[0], fractions(m, env)[-1]
        where = {"env": env, "study": "size"}
        diff = C.final_values(m, metric, fraction=small, **where) - C.final_values(m, metric, fraction=full, **where)
        evidence.append(C.directional(env, diff, "less", note=f"{small:.0%} - {full:.0%}"))
    what = {"return": "performance", "srank": "effective rank"}[metric]
    return C.Claim(
        f"dataset_size.{metric}", f"The {what} collapses with low data proportions, such as 5% of the dataset "
        "(Section 4.2, Fig. 6).", f"per seed, final {metric} on the smallest fraction minus on all of the data",
        "held if < 0 (one-sided sign-flip test, p < 0.05); not held if > 0", tuple(evidence))


def claim_ordering(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="size"):
        _, tau = ordering_agreement(m, env)
        with C.quiet_nan_warnings():
            per_seed = np.nanmean(tau, axis=1)
        evidence.append(C.directional(env, per_seed, "less", null=TAU_AGREE))
    return C.Claim(
        "dataset_size.ordering", "The ordering of the policies by performance does not correspond to their ordering "
        "by effective rank during training (Section 4.2, Fig. 6).", "per seed, Kendall's tau between the fractions' "
        "srank and their return, averaged over the evaluations after the start", f"held if tau < {TAU_AGREE} "
        f"(one-sided sign-flip test against {TAU_AGREE}, p < 0.05); not held if tau > {TAU_AGREE}", tuple(evidence))


def weak_minus_noiseless(m: C.Metrics, env: str, statistic: Callable[[C.Metrics, dict], np.ndarray]) -> C.Evidence:
    """Whether the per-seed ``statistic`` is greater on the weak behaviour's data than on the
    noiseless, fully trained behaviour's data of ``env`` (both from the quality study)."""
    weak = weak_of(m, env)
    if weak is None or QUALITY_GOOD not in datasets(m, env):
        return C.Evidence(env, "not testable here", note="no weak or no noiseless dataset")
    diff = statistic(m, quality_where(env, weak)) - statistic(m, quality_where(env, QUALITY_GOOD))
    return C.directional(env, diff, "greater", note="weak - noiseless")


def claim_quality_phases(m: C.Metrics) -> C.Claim:
    evidence = [weak_minus_noiseless(m, env, stuck_in_phase_one)
                for env in m.values("env", study="quality", agent="dqn")]
    return C.Claim(
        "dataset_size.quality_phases", "With data from a poor behaviour policy the agent stays in phase 1, while "
        "with good data it reaches the later phases (Section 4.1, Fig. 4).", "per seed, the fraction of learning "
        "rates whose run ends in phase 1 (an early srank collapse and no rise after it: common.detect_phases; "
        "a run with no early collapse is not in phase 1) on the weak behaviour's data minus on the "
        "noiseless, fully trained behaviour's data", "held if > 0 (one-sided sign-flip test, p < 0.05); not held if "
        "< 0", tuple(evidence))


def claim_value_error(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="quality", agent="dqn"):
        if QUALITY_GOOD not in datasets(m, env):
            evidence.append(C.Evidence(env, "not testable here", note="no noiseless dataset"))
            continue
        evidence.append(C.directional(env, srank_value_error_correlation(m, quality_where(env, QUALITY_GOOD)), "less",
                                      null=-C.STRONG_CORRELATION))
    return C.Claim(
        "dataset_size.value_error", "\"Figure 29 shows the correlation between the value error and the effective "
        "ranks. There is a strong anti-correlation between the effective ranks and the performance of the agents\" "
        "(Appendix A.5; the section and the figure are about the value error, which is what is tested).",
        "per seed, Spearman's rho between srank and value error over every learning rate and evaluation, on the "
        "noiseless, fully trained behaviour's data", f"held if rho < -{C.STRONG_CORRELATION} (one-sided sign-flip "
        f"test against -{C.STRONG_CORRELATION}, p < 0.05); not held if rho > -{C.STRONG_CORRELATION} by the same "
        "test", tuple(evidence))


def claim_value_error_poor_data(m: C.Metrics) -> C.Claim:
    evidence = [weak_minus_noiseless(m, env, srank_value_error_correlation)
                for env in m.values("env", study="quality", agent="dqn")]
    return C.Claim(
        "dataset_size.value_error_poor_data", "...except where the behaviour policy that generated the data performs "
        "poorly (Appendix A.5, Fig. 29: IceHockey).", "per seed, rho(srank, value error) on the weak behaviour's "
        "data minus on the noiseless data", "held if > 0, i.e. the anti-correlation is weaker on poor data "
        "(one-sided sign-flip test, p < 0.05); not held if < 0", tuple(evidence))


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    out = []
    if m.has(study="size"):
        out += [claim_smallest_fraction(m, "return"), claim_smallest_fraction(m, "srank"), claim_ordering(m)]
    if m.has(study="quality"):
        out += [claim_quality_phases(m), claim_value_error(m), claim_value_error_poor_data(m)]
    return out


# ------------------------------------------------------------------------------------------------
# Figures: one function per figure
# ------------------------------------------------------------------------------------------------


def plot_dataset_size(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 6: srank, return and dead units per fraction, and the ordering agreement."""
    envs = m.values("env", study="size")
    fig, axes = plt.subplots(4, len(envs), figsize=(4.4 * len(envs), 10), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        colors = plt.cm.plasma(np.linspace(0.0, 0.85, len(fractions(m, env))))
        for f, color in zip(fractions(m, env), colors):
            for i, metric in enumerate(("srank", "return", "dead_units")):
                C.plot_band(axes[i, j], *m.curves(env=env, study="size", fraction=f, metric=metric),
                            f"{f:.0%} of the data" if i == 0 else None, color)
        steps, tau = ordering_agreement(m, env)
        C.plot_band(axes[3, j], steps, tau, None, "k")
        axes[3, j].axhline(TAU_AGREE, color="0.6", lw=0.8, ls="--")
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return")
        axes[2, j].set(ylabel="dead units")
        axes[3, j].set(ylabel="Kendall tau\n(srank order vs return order)", xlabel="gradient steps", ylim=(-1.05, 1.05))
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 6: offline double DQN on fractions of one dataset ({C.seeds_note(m, env=envs[0], study='size')})")
    C.save_figure(fig, out, "fig06_dataset_size")


def data_label(data: tuple[float, float]) -> str:
    return f"noise {data[0]:g}" + ("" if data[1] == 1.0 else f", behaviour trained {data[1]:.0%} of the time")


def plot_quality(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 4: srank and return per dataset quality (one learning rate per column group: the
    middle one), the behaviour's return beside it, and the phase each run ends in."""
    envs = m.values("env", study="quality", agent="dqn")
    fig, axes = plt.subplots(3, len(envs), figsize=(4.6 * len(envs), 9), squeeze=False)
    for j, env in enumerate(envs):
        data = datasets(m, env)
        colors = plt.cm.cividis(np.linspace(0.0, 0.9, len(data)))
        lrs = sorted(m.values("lr", env=env, study="quality", agent="dqn"))
        lr = lrs[len(lrs) // 2]
        for k, (d, color) in enumerate(zip(data, colors)):
            where = quality_where(env, d)
            steps, curves = m.curves(lr=lr, metric="srank", **where)
            C.plot_band(axes[0, j], np.maximum(steps, 1), curves, data_label(d), color)
            C.plot_band(axes[1, j], *m.curves(lr=lr, metric="return", **where), None, color)
            level = m.value[m.mask(env=env, study="quality", agent="behaviour", noise=d[0], behaviour_training=d[1])]
            axes[1, j].axhline(level[0], color=color, ls=":", lw=1)
            # A run with no early collapse has no phases to see: its own share (grey, hatched).
            counts = np.zeros(4)
            for rate in lrs:
                s, cs = m.curves(lr=rate, metric="srank", **where)
                for c in cs:
                    if np.isfinite(c).all():
                        counts[C.detect_phases(s, c).final_phase] += 1
            shares = counts / max(counts.sum(), 1)
            for part, alpha in enumerate((1.0, 1.0, 0.6, 0.3)):
                axes[2, j].bar(k, shares[part], 0.8, bottom=shares[:part].sum(), alpha=alpha,
                               color="0.85" if part == 0 else color, hatch="//" if part == 0 else None)
        axes[0, j].set(xscale="log", title=f"{env} (lr {lr:g})")
        axes[1, j].set(xlabel="gradient steps")
        axes[2, j].set_xticks(range(len(data)), [data_label(d).replace(", ", "\n") for d in data], fontsize=6)
        axes[2, j].set(ylim=(0, 1))
    # One label per row, on the left, so that no label runs into the panel beside it.
    axes[0, 0].set(ylabel="srank")
    axes[1, 0].set(ylabel="evaluation return\n(dotted: the behaviour's)")
    n_lrs = "/".join(str(n) for n in sorted({len(m.values("lr", env=e, study="quality", agent="dqn")) for e in envs}))
    axes[2, 0].set(ylabel=f"share of runs ({n_lrs} lrs x seeds) by the\nphase they end in: no early collapse\n"
                          "(grey) / phase 1 (dark) / 2 / 3 (light)")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"Fig. 4: data quality and the phases of learning ({C.seeds_note(m, study='quality', agent='dqn')})")
    C.save_figure(fig, out, "fig04_data_quality")


def plot_value_error(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 29: value error against srank at every evaluation, per dataset quality."""
    envs = m.values("env", study="quality", agent="dqn")
    claim = claim_value_error(m)
    fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 3.6), squeeze=False)
    for j, env in enumerate(envs):
        data = datasets(m, env)
        for d, color in zip(data, plt.cm.cividis(np.linspace(0.0, 0.9, len(data)))):
            s, v = srank_and_value_error(m, quality_where(env, d))
            axes[0, j].scatter(s, v, s=6, alpha=0.5, color=color, label=data_label(d))
        axes[0, j].set(xlabel="srank", ylabel="value error |Q - G|", yscale="log")
        axes[0, j].set_title(f"{env}\n{claim.on(env)}", fontsize=8)
        axes[0, j].legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # off the points
    fig.suptitle("Fig. 29: value error against srank at every evaluation (all learning rates and seeds; claim: "
                 "per-seed Spearman on the noiseless data)", fontsize=9, y=1.06)
    C.save_figure(fig, out, "fig29_value_error")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    if m.has(study="size"):
        plot_dataset_size(plt, m, out)
    if m.has(study="quality"):
        plot_quality(plt, m, out)
        plot_value_error(plt, m, out)


STUDY = C.Study("exp_dataset_size", __doc__.split("\n\n")[0], PRESETS, run, claims, plot, parts=parts)

if __name__ == "__main__":
    C.main(STUDY)

"""The 12-learning-rate sweep: three phases of learning, rank against learning rate, dead ReLU
units, and offline policy selection by rank (Sections 4.1, 7 and 10 of Gulcehre et al. 2022).

Figures: 2/4/32 (srank and return per learning rate, phases marked), 5 (final srank against
learning rate at several training lengths), 11/12 (dead units along training), 14 (dead units
against srank), 19/20 (offline policy selection by srank and by dead units, simple regret),
31 (the best learning rate by return at each training length).

    make exp_lr_sweep                         # cpu preset: bsuite catch, cartpole, mountain_car
    python exp_lr_sweep.py --preset paper --data-dir /data/dqn_replay   # the paper's Atari sweep
    python exp_lr_sweep.py --plot-only        # redraw the figures from results/exp_lr_sweep/
    python exp_lr_sweep.py --help             # every setting, with the chosen preset's value
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import common as C

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """Offline double DQN trained with 12 learning rates: phases, rank, dead units, policy selection."""

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
    """Minibatch size (bsuite 32, Atari 256: Appendix A.12)."""
    target_update_period: int
    """Gradient steps between target-network updates."""
    dataset_noise: float
    """bsuite/MinAtar collection: probability that the behaviour agent's action is replaced by a random one."""
    dataset_size: int
    """bsuite/MinAtar collection: transitions in the dataset."""
    gamma: float = 0.99
    """Discount."""
    optimizer: C.Optimizer = "adam"
    """Optimizer (the paper's: Adam)."""
    probe_size: int = 512
    """States in the fixed probe batch for srank and dead units (the paper's rank batch)."""
    short_fraction: float = 0.25
    """The shorter training length of Fig. 5 and Fig. 19/20, as a fraction of the run."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""
    replay_checkpoints: tuple[int, ...] = (0,)
    """Atari: which DQN Replay checkpoints to load."""

    checkpoint_seconds: float = 60.0
    """Wall seconds between checkpoints: a killed run resumes from the last one."""

    def check(self) -> None:
        C.require(self.checkpoint_seconds >= 0, "--checkpoint-seconds must be >= 0")
        C.check_env_ids(self.env)
        C.require_positive(self, "seeds", "num_lrs", "num_steps", "chunk_steps", "eval_every", "eval_episodes",
                           "batch_size", "target_update_period", "lr_min", "lr_max", "probe_size")
        C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        C.require(self.lr_min <= self.lr_max, f"--lr-min ({self.lr_min}) must not exceed --lr-max ({self.lr_max})")
        C.require_fraction(self, "short_fraction")
        C.require_multiple(self, "num_steps", "chunk_steps")
        C.require_multiple(self, "eval_every", "chunk_steps")
        if self.early_chunk_steps:
            C.require_multiple(self, "chunk_steps", "early_chunk_steps")


PRESETS = {
    # The paper's bsuite hyperparameters (batch 32, 2x64 ReLU, Adam, discount 0.99) with the number
    # of gradient steps scaled from 1e6 to 1e5 so that 3 envs x 12 rates x 2 seeds fit ~15 CPU minutes.
    # The target network is updated every 100 steps, Acme's DQN default (the paper's bsuite value is
    # not stated).
    "cpu": Config(env=("bsuite/catch", "bsuite/cartpole", "bsuite/mountain_car"), seeds=2, num_steps=100_000,
                  chunk_steps=1_000, early_chunk_steps=100, eval_every=10_000, eval_episodes=10, lr_min=1e-5,
                  lr_max=1e-1, num_lrs=12, batch_size=32, target_update_period=100, dataset_noise=0.1,
                  dataset_size=50_000),
    # The paper's long-run Atari sweep (DQN-256-20M) on its nine online-policy-selection games.
    "paper": Config(env=tuple(f"atari/{g}" for g in ("BeamRider", "DemonAttack", "DoubleDunk", "IceHockey",
                                                     "MsPacman", "Pooyan", "RoadRunner", "Robotank", "Zaxxon")),
                    seeds=5, num_steps=20_000_000, chunk_steps=10_000, early_chunk_steps=1_000, eval_every=500_000,
                    eval_episodes=10, lr_min=1e-5, lr_max=1e-2, num_lrs=12, batch_size=256,
                    target_update_period=2_500, dataset_noise=0.0, dataset_size=0, replay_checkpoints=(0, 1, 2, 3)),
    "smoke": Config(env=("bsuite/catch",), seeds=2, num_steps=2_000, chunk_steps=500, early_chunk_steps=100,
                    eval_every=1_000, eval_episodes=4, lr_min=1e-4, lr_max=1e-1, num_lrs=4, batch_size=32,
                    target_update_period=100, dataset_noise=0.1, dataset_size=2_000),
}


def learning_rates(cfg: Config) -> np.ndarray:
    return np.geomspace(cfg.lr_min, cfg.lr_max, cfg.num_lrs)


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> dict:
    """Per environment: one fixed dataset; offline double DQN with a ReLU network (Huber loss,
    Adam, a target network), 12 learning rates x seeds as one vmapped program; every chunk the
    probe metrics on a fixed batch of 512 dataset states; every ``eval_every`` steps the greedy
    policy's return."""
    rows = []
    for env_id in cfg.env:
        with timings("collect"):
            ds = C.offline_dataset(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size,
                                   data_dir=cfg.data_dir, checkpoints=cfg.replay_checkpoints)
        net = C.default_network(env_id, ds.num_actions, activation="relu")  # bsuite: a 2x64 MLP
        loss = C.DoubleDQN(gamma=cfg.gamma, clip_rewards=env_id.startswith("atari/"))
        train = C.TrainConfig(num_steps=cfg.num_steps, chunk_steps=cfg.chunk_steps,
                              early_chunk_steps=cfg.early_chunk_steps, batch_size=cfg.batch_size,
                              optimizer=cfg.optimizer, target_update_period=cfg.target_update_period,
                              probe_size=cfg.probe_size, eval_every=cfg.eval_every,
                              checkpoint_seconds=cfg.checkpoint_seconds)
        evaluate = C.Evaluator(env_id, episodes=cfg.eval_episodes)  # greedy, environments seeded by EVAL_SEED
        members = [C.Member(seed=s, learning_rate=float(lr), columns={"lr": float(lr)})
                   for s in range(cfg.seeds) for lr in learning_rates(cfg)]
        result = C.train_offline(net, ds, loss, members, train, evaluate=evaluate,
                                 columns={"study": "lr_sweep", "env": env_id, "agent": "dqn"},
                                 checkpoints=out / "checkpoints", timings=timings)
        rows += result.rows
    C.write_metrics(out, rows)
    return {"learning_rates": learning_rates(cfg).tolist()}


# ------------------------------------------------------------------------------------------------
# The study's own pieces: phase detection and offline policy selection
# ------------------------------------------------------------------------------------------------

EARLY_WINDOW = 0.05  # "within the first few percent of training"
EARLY_DROP = 0.75  # an early collapse: srank falls to <= 75% of its initial value...
RISE = 1.25  # ...and later rises to >= 125% of that minimum (phase 2)
LATE_COLLAPSE = 0.5  # phase 3: the final srank is <= 50% of the peak reached after the early minimum
PEAK_MARGIN = 0.1  # "higher in between": the interior peak exceeds both end rates by >= 10% of the peak


def detect_phases(steps: np.ndarray, srank: np.ndarray, num_steps: int) -> dict:
    """Phases of one (seed-mean) srank curve, by the thresholds above. Returns the early minimum
    (step, value), the later peak, whether each phase occurred, and the final value."""
    early = steps <= EARLY_WINDOW * num_steps
    i_min = int(np.nanargmin(np.where(early, srank, np.inf)))
    later = steps > steps[i_min]
    i_peak = int(np.nanargmax(np.where(later, srank, -np.inf))) if later.any() else i_min
    collapse = srank[i_min] <= EARLY_DROP * srank[0]
    rise = collapse and srank[i_peak] >= RISE * srank[i_min]
    late = rise and srank[-1] <= LATE_COLLAPSE * srank[i_peak]
    return {"early_min": (steps[i_min], srank[i_min]), "peak": (steps[i_peak], srank[i_peak]),
            "early_collapse": bool(collapse), "rise": bool(rise), "late_collapse": bool(late)}


def selection_score(returns: np.ndarray, criterion: np.ndarray) -> float:
    """Normalised score of picking the candidate with the largest ``criterion``: (R_pick - R_min) /
    (R_max - R_min), so 1 = the best candidate and 0 = the worst (what the paper's Fig. 19/20 plot
    as simple regret). Ties in the criterion (srank and dead units are integers) are broken at
    random, i.e. the tied candidates' scores are averaged. NaN if all returns are equal."""
    lo, hi = np.nanmin(returns), np.nanmax(returns)
    tied = criterion == np.nanmax(criterion)
    return float(np.mean((returns[tied] - lo) / (hi - lo))) if hi > lo else float("nan")


def random_selection_score(returns: np.ndarray) -> float:
    """Expected score of picking a candidate uniformly at random."""
    lo, hi = np.nanmin(returns), np.nanmax(returns)
    return float(np.nanmean((returns - lo) / (hi - lo))) if hi > lo else float("nan")


# ------------------------------------------------------------------------------------------------
# Analysis and claims, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def lrs(m: C.Metrics, env: str) -> list[float]:
    return sorted(m.values("lr", env=env, agent="dqn"))


def at_step(m: C.Metrics, step: int, env: str, metric: str) -> np.ndarray:
    """(learning rates, seeds) values at ``step``, in increasing learning rate."""
    return np.stack([m.at_step(step, env=env, agent="dqn", lr=lr, metric=metric) for lr in lrs(m, env)])


def eval_step_near(m: C.Metrics, target: float) -> int:
    steps = [s for s in m.steps(metric="return") if s > 0]
    return int(min(steps, key=lambda s: abs(s - target)))


def mean_curve(m: C.Metrics, env: str, lr: float, metric: str = "srank") -> tuple[np.ndarray, np.ndarray]:
    steps, grid = m.curves(env=env, agent="dqn", lr=lr, metric=metric)
    return steps, C.mean_and_stderr(grid)[0]


def selection_table(m: C.Metrics, env: str, step: int) -> dict[str, float]:
    """Mean over seeds of the normalised selection score of each rule at ``step``."""
    returns = at_step(m, step, env, "return")  # (lrs, seeds)
    srank = at_step(m, step, env, "srank")
    dead = at_step(m, step, env, "dead_units")
    scores = {"srank": [], "dead_units": [], "random": []}
    for s in range(returns.shape[1]):
        scores["srank"].append(selection_score(returns[:, s], srank[:, s]))
        scores["dead_units"].append(selection_score(returns[:, s], -dead[:, s]))
        scores["random"].append(random_selection_score(returns[:, s]))
    return {k: float(np.nanmean(v)) for k, v in scores.items()} | {f"{k}_se": float(C.mean_and_stderr(np.asarray(v))[1])
                                                                     for k, v in scores.items()}


def lrs_by_return(m: C.Metrics, env: str, step: int) -> tuple[float, float, float]:
    """The learning rate with the best seed-mean return at ``step``; where several tie (catch is
    often solved by many), their geometric mean and the range of the tied rates."""
    returns = np.nanmean(at_step(m, step, env, "return"), axis=1)
    rates = np.asarray(lrs(m, env))
    tied = rates[returns == np.nanmax(returns)]
    return float(np.exp(np.mean(np.log(tied)))), float(tied.min()), float(tied.max())


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    envs = m.values("env")
    num_steps = int(m.steps().max())
    short = eval_step_near(m, cfg.short_fraction * num_steps)
    inverted_u, dead_lr, dead_srank, early, regret = {}, {}, {}, {}, {}
    for env in envs:
        log_lrs = np.log10(lrs(m, env))
        srank = at_step(m, num_steps, env, "srank")  # (lrs, seeds)
        dead = at_step(m, num_steps, env, "dead_units")
        mean = np.nanmean(srank, axis=1)
        peak = int(np.nanargmax(mean))
        inverted_u[env] = bool((0 < peak < len(mean) - 1) and min(mean[peak] - mean[0], mean[peak] - mean[-1])
                               >= PEAK_MARGIN * mean[peak])
        dead_lr[env] = C.spearman(np.repeat(log_lrs, srank.shape[1]), dead.ravel())
        dead_srank[env] = C.pearson(dead.ravel(), srank.ravel())
        early[env] = sum(detect_phases(*mean_curve(m, env, lr), num_steps)["rise"] for lr in lrs(m, env))
        regret[env] = selection_table(m, env, short)
    srank_sel = np.nanmean([regret[e]["srank"] for e in envs])
    random_sel = np.nanmean([regret[e]["random"] for e in envs])
    fmt = lambda d: ", ".join(f"{C.short_env(e)}: {v:.2f}" if isinstance(v, float) else f"{C.short_env(e)}: {v}"
                              for e, v in d.items())
    return [
        C.Claim("lr_sweep.1", "Final srank against log learning rate is low at both ends and higher in between",
                "seed-mean final srank peaks at an interior rate, >= 10% above both end rates, per env",
                fmt(inverted_u), all(inverted_u.values())),
        C.Claim("lr_sweep.2", "Dead units grow with the learning rate and correlate negatively with srank (ReLU)",
                "Spearman(log lr, final dead units) > 0 and Pearson(dead units, srank) < 0, per env",
                f"spearman {fmt(dead_lr)}; pearson {fmt(dead_srank)}",
                all(dead_lr[e] > 0 and dead_srank[e] < 0 for e in envs)),
        C.Claim("lr_sweep.3", "An early abrupt srank drop (first 5% of training) followed by a rise, in at least "
                "one learning rate per environment",
                f"learning rates with a drop to <= {EARLY_DROP:.0%} of the initial srank and a rise to >= "
                f"{RISE:.0%} of that minimum, per env", fmt(early), all(v >= 1 for v in early.values())),
        C.Claim("lr_sweep.4", "Selecting the learning rate with maximal srank beats random selection at the "
                f"shorter training length (step {short})",
                "mean normalised selection score (1 = best, 0 = worst) by max srank vs random",
                f"{srank_sel:.3f} vs {random_sel:.3f}", bool(srank_sel > random_sel)),
    ]


# ------------------------------------------------------------------------------------------------
# Figures, from metrics.csv alone: one function per figure
# ------------------------------------------------------------------------------------------------


def lr_colors(plt, n: int):
    return plt.cm.viridis(np.linspace(0, 0.95, n))


def plot_phases(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 2/4/32: srank and return per learning rate, phases marked on the srank curves."""
    envs = m.values("env")
    num_steps = int(m.steps().max())
    fig, axes = plt.subplots(2, len(envs), figsize=(4.2 * len(envs), 6.4), squeeze=False)
    for j, env in enumerate(envs):
        for lr, color in zip(lrs(m, env), lr_colors(plt, len(lrs(m, env)))):
            steps, grid = m.curves(env=env, agent="dqn", lr=lr, metric="srank")
            C.plot_band(axes[0, j], np.maximum(steps, 1), grid, f"lr={lr:.2g}", color)
            mean = C.mean_and_stderr(grid)[0]
            phases = detect_phases(steps, mean, num_steps)
            if phases["early_collapse"]:
                axes[0, j].plot(max(phases["early_min"][0], 1), phases["early_min"][1], "v", color=color, ms=5)
            if phases["late_collapse"]:
                axes[0, j].plot(steps[-1], mean[-1], "x", color=color, ms=7, mew=2)
            C.plot_band(axes[1, j], *m.curves(env=env, agent="dqn", lr=lr, metric="return"), None, color)
        axes[0, j].set(xscale="log", title=env, ylabel="srank (probe batch of 512)")
        axes[1, j].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0, 0].legend(ncol=2, title="▼ early collapse   ✕ late collapse", loc="lower left")
    fig.suptitle(f"Fig. 2/4/32: offline double DQN (ReLU) per learning rate ({C.seeds_note(m, env=envs[0])})")
    C.save_figure(fig, out, "fig02_srank_and_return_per_lr")


def plot_srank_vs_lr(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 5: final srank against learning rate at several training lengths."""
    envs = m.values("env")
    num_steps = int(m.steps().max())
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    lengths = sorted({eval_step_near(m, f * num_steps) for f in (cfg.short_fraction, 0.5, 1.0)})
    for j, env in enumerate(envs):
        for length, shade in zip(lengths, np.linspace(0.35, 0.9, len(lengths))):
            mean, err = C.mean_and_stderr(at_step(m, length, env, "srank").T)
            axes[0, j].errorbar(lrs(m, env), mean, err, marker="o", ms=3, capsize=2, color=plt.cm.magma(1 - shade),
                                label=f"{length:,} steps")
        axes[0, j].set(xscale="log", xlabel="learning rate", ylabel="srank", title=env)
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 5: srank against learning rate at several training lengths ({C.seeds_note(m, env=envs[0])})")
    C.save_figure(fig, out, "fig05_srank_vs_lr")


def plot_dead_units(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 11/12: dead units along training per learning rate."""
    envs = m.values("env")
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for j, env in enumerate(envs):
        for lr, color in zip(lrs(m, env), lr_colors(plt, len(lrs(m, env)))):
            steps, grid = m.curves(env=env, agent="dqn", lr=lr, metric="dead_units")
            C.plot_band(axes[0, j], np.maximum(steps, 1), grid, f"lr={lr:.2g}", color)
        axes[0, j].set(xscale="log", xlabel="gradient steps", ylabel="dead units (of 64)", title=env)
    axes[0, 0].legend(ncol=2)
    fig.suptitle(f"Fig. 11/12: dead ReLU units of the penultimate layer ({C.seeds_note(m, env=envs[0])})")
    C.save_figure(fig, out, "fig11_dead_units")


def plot_dead_vs_srank(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 14: dead units against srank at the end of training, every learning rate and seed."""
    envs = m.values("env")
    num_steps = int(m.steps().max())
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for j, env in enumerate(envs):
        srank, dead = at_step(m, num_steps, env, "srank"), at_step(m, num_steps, env, "dead_units")
        for k, color in enumerate(lr_colors(plt, len(srank))):
            axes[0, j].scatter(dead[k], srank[k], color=color, s=14)
        r = C.pearson(dead.ravel(), srank.ravel())
        axes[0, j].set(xlabel="dead units", ylabel="srank", title=f"{env}  (Pearson r = {r:.2f})")
    fig.suptitle("Fig. 14: dead units against srank after training (colour = learning rate, one dot per seed)")
    C.save_figure(fig, out, "fig14_dead_units_vs_srank")


def plot_policy_selection(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 19/20: offline policy selection at two training lengths."""
    envs = m.values("env")
    num_steps = int(m.steps().max())
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), squeeze=False)
    rules = [("srank", "max srank"), ("dead_units", "fewest dead units"), ("random", "random (expected)")]
    for j, length in enumerate((eval_step_near(m, cfg.short_fraction * num_steps), num_steps)):
        width = 0.8 / (len(rules) + 1)
        tables = [selection_table(m, env, length) for env in envs]
        for k, (rule, label) in enumerate(rules):
            axes[0, j].bar(np.arange(len(envs)) + k * width, [t[rule] for t in tables], width,
                           yerr=[t[f"{rule}_se"] for t in tables], capsize=2, label=label)
        axes[0, j].bar(np.arange(len(envs)) + len(rules) * width, np.ones(len(envs)), width, label="online (oracle)",
                       color="0.7")
        axes[0, j].set_xticks(np.arange(len(envs)) + 0.4 - width / 2, [C.short_env(e) for e in envs])
        axes[0, j].set(ylim=(0, 1.05), ylabel="normalised score (1 = best lr)", title=f"after {length:,} steps")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"Fig. 19/20: offline policy selection over {len(lrs(m, envs[0]))} learning rates "
                 f"(paper's simple regret, 1 = best; {C.seeds_note(m, env=envs[0])})")
    C.save_figure(fig, out, "fig19_offline_policy_selection")


def plot_best_lr(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 31: the best learning rate by return at each training length."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for env in m.values("env"):
        steps = [s for s in m.steps(env=env, metric="return") if s > 0]
        best = np.asarray([lrs_by_return(m, env, s) for s in steps])  # (steps, [centre, lo, hi])
        spread = np.maximum([best[:, 0] - best[:, 1], best[:, 2] - best[:, 0]], 0.0)  # >= 0 despite rounding
        ax.errorbar(steps, best[:, 0], spread, marker="o", ms=3, capsize=2, label=env)
    ax.set(yscale="log", xlabel="gradient steps",
           ylabel="best learning rate (seed-mean return)\nbars: range of rates tied for best")
    ax.legend()
    fig.suptitle("Fig. 31: the best learning rate by online return along training")
    C.save_figure(fig, out, "fig31_best_lr_over_training")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    plot_phases(plt, m, out)
    plot_srank_vs_lr(plt, m, cfg, out)
    plot_dead_units(plt, m, out)
    plot_dead_vs_srank(plt, m, out)
    plot_policy_selection(plt, m, cfg, out)
    plot_best_lr(plt, m, out)


# ------------------------------------------------------------------------------------------------

STUDY = C.Study("exp_lr_sweep", __doc__.split("\n\n")[0], PRESETS, run, claims, plot)

if __name__ == "__main__":
    C.main(STUDY)

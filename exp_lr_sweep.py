"""The 12-learning-rate sweep: three phases of learning, rank against learning rate, dead ReLU
units, and offline policy selection by rank (Sections 4.1, 7 and 10 of Gulcehre et al. 2022).

Figures: 2/4/32 (srank and return per learning rate, phases marked), 5 (final srank against
learning rate at several training lengths), 11/12 (dead units along training), 14 (dead units
against srank), 19/20 (offline policy selection by srank and by dead units, simple regret),
31 (the best learning rate by return at each training length).

    make exp_lr_sweep                         # cpu preset: bsuite catch, cartpole, mountain_car
    python exp_lr_sweep.py --preset paper --data-dir /data/dqn_replay   # the paper's Atari sweep
    python exp_lr_sweep.py --plot-only        # redraw the figures from results/exp_lr_sweep/

Protocol. Offline double DQN with a ReLU network on a fixed dataset, trained with 12 learning
rates evenly spaced in log space between ``lr_min`` and ``lr_max`` (the paper's range is lost from
its text; 1e-5 .. 1e-1 spans runs that never leave phase 1 to runs that collapse), x seeds, all as
one vmapped program per environment. Every chunk: srank (delta = 0.01), dead units and the
dormant fraction on a fixed 512-state probe batch; every ``eval_every`` steps: online returns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import common as C

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(C.OfflineStudyConfig):
    lr_min: float
    lr_max: float
    num_lrs: int
    short_fraction: float = 0.25  # the "shorter training length" of Fig. 5 and Fig. 19/20


PRESETS = {
    # The paper's bsuite hyperparameters (batch 32, 2x64 ReLU, Adam, discount 0.99) with the number
    # of gradient steps scaled from 1e6 to 1e5 so that 3 envs x 12 rates x 2 seeds fit ~15 CPU minutes.
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


@dataclasses.dataclass(frozen=True)
class Args(C.StudyArgs):
    """Offline double DQN trained with 12 learning rates: phases, rank, dead units, policy selection."""

    num_steps: int | None = None
    """Gradient steps per run."""
    lr_min: float | None = None
    """Smallest learning rate of the log-spaced sweep."""
    lr_max: float | None = None
    """Largest learning rate of the log-spaced sweep."""
    num_lrs: int | None = None
    """Number of learning rates (12 in the paper)."""
    eval_every: int | None = None
    """Gradient steps between online evaluations."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""


def learning_rates(cfg: Config) -> np.ndarray:
    return np.geomspace(cfg.lr_min, cfg.lr_max, cfg.num_lrs)


def lr_label(lr: float) -> str:
    return f"lr={lr:.2g}"


def lr_of(label: str) -> float:
    return float(label.split("=", 1)[1])


# ------------------------------------------------------------------------------------------------
# The experiment's own pieces: phase detection and offline policy selection
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


def at_step(metrics: C.Metrics, step: int, **where) -> np.ndarray:
    """(configs, seeds) values at ``step`` for every learning rate, in sweep order."""
    return np.stack([metrics.at_step(step, config=c, **where) for c in metrics.values("config", **where)])


# ------------------------------------------------------------------------------------------------
# run(): train, evaluate, write metrics.csv
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path) -> dict:
    C.check_env_ids(cfg.env)
    members = [C.Member(seed=s, learning_rate=float(lr), config=lr_label(lr))
               for s in range(cfg.seeds) for lr in learning_rates(cfg)]
    rows = []
    for env_id in cfg.env:
        ds = cfg.dataset(env_id)
        net = C.default_network(env_id, ds.num_actions)
        result = C.train_offline(net, ds, cfg.train_config(), members, env_id=env_id, agent="dqn",
                                 evaluate_fn=cfg.evaluator(net, env_id), checkpoint_dir=out / "checkpoints",
                                 run_name="exp_lr_sweep")
        rows += result.rows
    C.write_metrics(out, rows)
    return {"learning_rates": learning_rates(cfg).tolist()}


# ------------------------------------------------------------------------------------------------
# Claims, computed from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    envs = m.values("env")
    num_steps = max(r["step"] for r in m.rows)
    short = eval_step_near(m, cfg.short_fraction * num_steps)
    inverted_u, dead_lr, dead_srank, early, regret = {}, {}, {}, {}, {}
    for env in envs:
        lrs = np.log10([lr_of(c) for c in m.values("config", env=env)])
        srank = at_step(m, num_steps, env=env, metric="srank")  # (lrs, seeds)
        dead = at_step(m, num_steps, env=env, metric="dead_units")
        mean = np.nanmean(srank, axis=1)
        peak = int(np.nanargmax(mean))
        inverted_u[env] = bool((0 < peak < len(mean) - 1) and min(mean[peak] - mean[0], mean[peak] - mean[-1])
                               >= PEAK_MARGIN * mean[peak])
        dead_lr[env] = C.spearman(np.repeat(lrs, srank.shape[1]), dead.ravel())
        dead_srank[env] = C.pearson(dead.ravel(), srank.ravel())
        early[env] = sum(detect_phases(*mean_curve(m, env, c), num_steps)["rise"] for c in m.values("config", env=env))
        regret[env] = selection_table(m, env, short)
    srank_sel = np.nanmean([regret[e]["srank"] for e in envs])
    random_sel = np.nanmean([regret[e]["random"] for e in envs])
    fmt = lambda d: ", ".join(f"{e.split('/')[-1]}: {v:.2f}" if isinstance(v, float) else f"{e.split('/')[-1]}: {v}"
                              for e, v in d.items())
    return [
        C.Claim("lr_sweep.1", "Final srank against log learning rate is low at both ends and higher in between",
                "seed-mean final srank peaks at an interior rate, >= 10% above both end rates, per env",
                fmt(inverted_u),
                all(inverted_u.values())),
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


def eval_step_near(m: C.Metrics, target: float) -> int:
    steps = sorted({r["step"] for r in m.select(metric="return") if r["step"] > 0})
    return min(steps, key=lambda s: abs(s - target))


def mean_curve(m: C.Metrics, env: str, config: str, metric: str = "srank") -> tuple[np.ndarray, np.ndarray]:
    steps, grid = m.curves(env=env, config=config, metric=metric)
    return steps, C.mean_and_stderr(grid)[0]


def selection_table(m: C.Metrics, env: str, step: int) -> dict[str, float]:
    """Mean over seeds of the normalised selection score of each rule at ``step``."""
    returns = at_step(m, step, env=env, metric="return")  # (lrs, seeds)
    srank = at_step(m, step, env=env, metric="srank")
    dead = at_step(m, step, env=env, metric="dead_units")
    scores = {"srank": [], "dead_units": [], "random": []}
    for s in range(returns.shape[1]):
        scores["srank"].append(selection_score(returns[:, s], srank[:, s]))
        scores["dead_units"].append(selection_score(returns[:, s], -dead[:, s]))
        scores["random"].append(random_selection_score(returns[:, s]))
    return {k: float(np.nanmean(v)) for k, v in scores.items()} | {f"{k}_se": float(C.mean_and_stderr(np.asarray(v))[1])
                                                                     for k, v in scores.items()}


# ------------------------------------------------------------------------------------------------
# plot(): every figure from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    envs = m.values("env")
    num_steps = max(r["step"] for r in m.rows)
    configs = m.values("config", env=envs[0])
    colors = plt.cm.viridis(np.linspace(0, 0.95, len(configs)))
    note = C.seeds_note(m, env=envs[0])

    # Fig. 2/4/32: srank and return per learning rate, phases marked on the srank curves.
    fig, axes = plt.subplots(2, len(envs), figsize=(4.2 * len(envs), 6.4), squeeze=False)
    for j, env in enumerate(envs):
        for config, color in zip(configs, colors):
            steps, grid = m.curves(env=env, config=config, metric="srank")
            C.plot_band(axes[0, j], np.maximum(steps, 1), grid, config, color)
            phases = detect_phases(steps, C.mean_and_stderr(grid)[0], num_steps)
            if phases["early_collapse"]:
                axes[0, j].plot(max(phases["early_min"][0], 1), phases["early_min"][1], "v", color=color, ms=5)
            if phases["late_collapse"]:
                axes[0, j].plot(steps[-1], C.mean_and_stderr(grid)[0][-1], "x", color=color, ms=7, mew=2)
            C.plot_band(axes[1, j], *m.curves(env=env, config=config, metric="return"), None, color)
        axes[0, j].set(xscale="log", title=env, ylabel="srank (probe batch of 512)")
        axes[1, j].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0, 0].legend(ncol=2, title="▼ early collapse   ✕ late collapse", loc="lower left")
    fig.suptitle(f"Fig. 2/4/32: offline double DQN (ReLU) per learning rate ({note})")
    C.save_figure(fig, out, "fig02_srank_and_return_per_lr")

    # Fig. 5: final srank against learning rate at several training lengths.
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    lengths = sorted({eval_step_near(m, f * num_steps) for f in (cfg.short_fraction, 0.5, 1.0)})
    for j, env in enumerate(envs):
        lrs = [lr_of(c) for c in configs]
        for length, shade in zip(lengths, np.linspace(0.35, 0.9, len(lengths))):
            values = at_step(m, length, env=env, metric="srank")
            mean, err = C.mean_and_stderr(values.T)
            axes[0, j].errorbar(lrs, mean, err, marker="o", ms=3, capsize=2, color=plt.cm.magma(1 - shade),
                                label=f"{length:,} steps")
        axes[0, j].set(xscale="log", xlabel="learning rate", ylabel="srank", title=env)
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 5: srank against learning rate at several training lengths ({note})")
    C.save_figure(fig, out, "fig05_srank_vs_lr")

    # Fig. 11/12: dead units along training per learning rate.
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for j, env in enumerate(envs):
        for config, color in zip(configs, colors):
            steps, grid = m.curves(env=env, config=config, metric="dead_units")
            C.plot_band(axes[0, j], np.maximum(steps, 1), grid, config, color)
        axes[0, j].set(xscale="log", xlabel="gradient steps", ylabel="dead units (of 64)", title=env)
    axes[0, 0].legend(ncol=2)
    fig.suptitle(f"Fig. 11/12: dead ReLU units of the penultimate layer ({note})")
    C.save_figure(fig, out, "fig11_dead_units")

    # Fig. 14: dead units against srank at the end of training, every learning rate and seed.
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for j, env in enumerate(envs):
        srank = at_step(m, num_steps, env=env, metric="srank")
        dead = at_step(m, num_steps, env=env, metric="dead_units")
        for k, color in enumerate(colors):
            axes[0, j].scatter(dead[k], srank[k], color=color, s=14)
        r = C.pearson(dead.ravel(), srank.ravel())
        axes[0, j].set(xlabel="dead units", ylabel="srank", title=f"{env}  (Pearson r = {r:.2f})")
    fig.suptitle("Fig. 14: dead units against srank after training (colour = learning rate, one dot per seed)")
    C.save_figure(fig, out, "fig14_dead_units_vs_srank")

    # Fig. 19/20: offline policy selection at two training lengths.
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), squeeze=False)
    rules = [("srank", "max srank"), ("dead_units", "fewest dead units"), ("random", "random (expected)")]
    for j, length in enumerate((eval_step_near(m, cfg.short_fraction * num_steps), num_steps)):
        width = 0.8 / (len(rules) + 1)
        for k, (rule, label) in enumerate(rules):
            tables = [selection_table(m, env, length) for env in envs]
            axes[0, j].bar(np.arange(len(envs)) + k * width, [t[rule] for t in tables], width,
                           yerr=[t[f"{rule}_se"] for t in tables], capsize=2, label=label)
        axes[0, j].bar(np.arange(len(envs)) + len(rules) * width, np.ones(len(envs)), width, label="online (oracle)",
                       color="0.7")
        axes[0, j].set_xticks(np.arange(len(envs)) + 0.4 - width / 2, [e.split("/")[-1] for e in envs])
        axes[0, j].set(ylim=(0, 1.05), ylabel="normalised score (1 = best lr)", title=f"after {length:,} steps")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"Fig. 19/20: offline policy selection over {len(configs)} learning rates "
                 f"(paper's simple regret, 1 = best; {note})")
    C.save_figure(fig, out, "fig19_offline_policy_selection")

    # Fig. 31: the best learning rate by return at each training length.
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for env in envs:
        steps = sorted({r["step"] for r in m.select(env=env, metric="return") if r["step"] > 0})
        best = np.asarray([lrs_by_return(m, env, s) for s in steps])  # (steps, [centre, lo, hi])
        spread = np.maximum([best[:, 0] - best[:, 1], best[:, 2] - best[:, 0]], 0.0)  # >= 0 despite rounding
        ax.errorbar(steps, best[:, 0], spread, marker="o", ms=3,
                    capsize=2, label=env)
    ax.set(yscale="log", xlabel="gradient steps",
           ylabel="best learning rate (seed-mean return)\nbars: range of rates tied for best")
    ax.legend()
    fig.suptitle("Fig. 31: the best learning rate by online return along training")
    C.save_figure(fig, out, "fig31_best_lr_over_training")


def lrs_by_return(m: C.Metrics, env: str, step: int) -> tuple[float, float, float]:
    """The learning rate with the best seed-mean return at ``step``; where several tie (catch is
    often solved by many), their geometric mean and the range of the tied rates."""
    returns = np.nanmean(at_step(m, step, env=env, metric="return"), axis=1)
    lrs = np.asarray([lr_of(c) for c in m.values("config", env=env)])
    tied = lrs[returns == np.nanmax(returns)]
    return float(np.exp(np.mean(np.log(tied)))), float(tied.min()), float(tied.max())


# ------------------------------------------------------------------------------------------------


def main(args: Args) -> None:
    C.run_study(args, PRESETS, run=run, claims=claims, plot=plot)


if __name__ == "__main__":
    C.cli(Args, main)

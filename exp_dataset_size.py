"""How the amount of data shapes rank and performance (Section 4.2, Figure 6 of Gulcehre et al. 2022).

Figure: 6 (srank, return and dead units along training for 5% to 100% of one dataset, and the
agreement between the srank ordering and the return ordering of the fractions).

    make exp_dataset_size                     # cpu preset: MinAtar breakout and space_invaders
    python exp_dataset_size.py --preset paper --data-dir /data/dqn_replay   # Atari Asterix, Zaxxon
    python exp_dataset_size.py --plot-only    # redraw from results/exp_dataset_size/metrics.csv
    python exp_dataset_size.py --help         # every setting, with the chosen preset's value
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import common as C


@dataclasses.dataclass(frozen=True)
class Config:
    """Offline double DQN on 5%..100% of one dataset: srank, dead units and return over training."""

    env: tuple[str, ...]
    """Environment ids (bsuite/<game>, minatar/<game>, atari/<Game>)."""
    seeds: int
    """Training seeds per fraction."""
    fractions: tuple[float, ...]
    """Fractions of the dataset's transitions to train on (nested prefixes of one seeded order)."""
    learning_rate: float
    """Adam learning rate."""
    num_steps: int
    """Gradient steps per run."""
    chunk_steps: int
    """Gradient steps per compiled call; the probe metrics are taken after each."""
    early_chunk_steps: int
    """Finer chunks over the first chunk (0: none)."""
    eval_every: int
    """Gradient steps between online evaluations."""
    eval_episodes: int
    """Greedy evaluation episodes per member and evaluation."""
    batch_size: int
    """Minibatch size."""
    target_update_period: int
    """Gradient steps between target-network updates."""
    dataset_noise: float
    """bsuite/MinAtar collection: probability of a random action in the behaviour policy."""
    dataset_size: int
    """bsuite/MinAtar collection: transitions in the full (100%) dataset."""
    gamma: float = 0.99
    """Discount."""
    optimizer: C.Optimizer = "adam"
    """Optimizer."""
    probe_size: int = 512
    """States in the fixed probe batch."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""
    replay_checkpoints: tuple[int, ...] = (0,)
    """Atari: which DQN Replay checkpoints to load."""

    checkpoint_seconds: float = 60.0
    """Wall seconds between checkpoints: a killed run resumes from the last one."""

    def check(self) -> None:
        C.require(self.checkpoint_seconds >= 0, "--checkpoint-seconds must be >= 0")
        C.check_env_ids(self.env)
        C.require_positive(self, "seeds", "learning_rate", "num_steps", "chunk_steps", "eval_every", "eval_episodes",
                           "batch_size", "target_update_period", "probe_size")
        C.require_fraction(self, "fractions")
        C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        C.require_multiple(self, "num_steps", "chunk_steps")
        C.require_multiple(self, "eval_every", "chunk_steps")
        if self.early_chunk_steps:
            C.require_multiple(self, "chunk_steps", "early_chunk_steps")


FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)

PRESETS = {
    # MinAtar (image observations, the MinAtar CNN) with locally collected 50k-transition datasets:
    # 5 fractions x 2 seeds train as one program at ~550 member-steps/s on 2 CPU cores, so 2e4 steps
    # per run on two games fit ~15 minutes. Batch 32, Adam 3e-4 (the paper's bsuite rate), discount
    # 0.99; the target network is updated every 1,000 steps (Atari's 2,500, scaled with the run).
    "cpu": Config(env=("minatar/breakout", "minatar/space_invaders"), seeds=2, num_steps=20_000, chunk_steps=500,
                  early_chunk_steps=100, eval_every=2_000, eval_episodes=8, fractions=FRACTIONS, learning_rate=3e-4,
                  batch_size=32, target_update_period=1_000, dataset_noise=0.1, dataset_size=50_000),
    "paper": Config(env=("atari/Asterix", "atari/Zaxxon"), seeds=5, num_steps=2_000_000, chunk_steps=10_000,
                    early_chunk_steps=1_000, eval_every=100_000, eval_episodes=10, fractions=FRACTIONS,
                    learning_rate=3e-5, batch_size=256, target_update_period=2_500, dataset_noise=0.0, dataset_size=0,
                    replay_checkpoints=(0, 1, 2, 3)),
    "smoke": Config(env=("bsuite/catch",), seeds=2, num_steps=600, chunk_steps=200, early_chunk_steps=0,
                    eval_every=200, eval_episodes=2, fractions=(0.05, 0.5, 1.0), learning_rate=3e-4, batch_size=32,
                    target_update_period=100, dataset_noise=0.1, dataset_size=2_000),
}


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> None:
    """Per environment: one dataset; its transitions in one seeded random order; an agent trained
    on fraction f samples only the first f of that order, so the subsets are nested and the same
    for every seed (as with one subsampling seed in the paper). Offline double DQN with ReLU,
    Adam; all fractions x seeds are one vmapped program. Every chunk the probe metrics on 512
    dataset states; every ``eval_every`` steps the greedy return."""
    rows = []
    for env_id in cfg.env:
        with timings("collect"):
            ds = C.offline_dataset(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size,
                                   data_dir=cfg.data_dir, checkpoints=cfg.replay_checkpoints)
        order = np.asarray(ds.valid)[np.random.default_rng(C.SUBSAMPLE_SEED).permutation(len(ds))]
        net = C.default_network(env_id, ds.num_actions, activation="relu")
        loss = C.DoubleDQN(gamma=cfg.gamma, clip_rewards=env_id.startswith("atari/"))
        train = C.TrainConfig(num_steps=cfg.num_steps, chunk_steps=cfg.chunk_steps,
                              early_chunk_steps=cfg.early_chunk_steps, batch_size=cfg.batch_size,
                              optimizer=cfg.optimizer, target_update_period=cfg.target_update_period,
                              probe_size=cfg.probe_size, eval_every=cfg.eval_every,
                              checkpoint_seconds=cfg.checkpoint_seconds)
        members = [C.Member(seed=s, learning_rate=cfg.learning_rate, columns={"fraction": f},
                            data_size=max(cfg.batch_size, int(round(f * len(ds)))))
                   for s in range(cfg.seeds) for f in cfg.fractions]
        result = C.train_offline(net, ds, loss, members, train, order=order,
                                 evaluate=C.Evaluator(env_id, episodes=cfg.eval_episodes),
                                 columns={"study": "dataset_size", "env": env_id, "agent": "dqn"},
                                 checkpoints=out / "checkpoints", timings=timings)
        rows += result.rows
    C.write_metrics(out, rows)


# ------------------------------------------------------------------------------------------------
# Analysis and claims, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def fractions(m: C.Metrics, env: str) -> list[float]:
    return sorted(m.values("fraction", env=env))


def ordering_agreement(m: C.Metrics, env: str) -> tuple[np.ndarray, np.ndarray]:
    """Kendall's tau between the seed-mean srank and the seed-mean return of the fractions, at
    every evaluation step after the start."""
    from scipy.stats import kendalltau

    steps = np.asarray([s for s in m.steps(env=env, metric="return") if s > 0])
    taus = []
    for step in steps:
        srank = [np.nanmean(m.at_step(step, env=env, fraction=f, metric="srank")) for f in fractions(m, env)]
        ret = [np.nanmean(m.at_step(step, env=env, fraction=f, metric="return")) for f in fractions(m, env)]
        taus.append(kendalltau(srank, ret).statistic)
    return steps, np.asarray(taus)


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    envs = m.values("env")
    ret, rank, tau = {}, {}, {}
    for env in envs:
        smallest, full = fractions(m, env)[0], fractions(m, env)[-1]
        ret[env] = (np.nanmean(m.last(env=env, fraction=smallest, metric="return")),
                    np.nanmean(m.last(env=env, fraction=full, metric="return")))
        rank[env] = (np.nanmean(m.last(env=env, fraction=smallest, metric="srank")),
                     np.nanmean(m.last(env=env, fraction=full, metric="srank")))
        tau[env] = ordering_agreement(m, env)[1]
    return [
        C.Claim("dataset_size.1", f"With the smallest fraction ({smallest:g}) the final return is lower than with "
                f"{full:g}", "seed-mean final return, smallest vs largest fraction, per env",
                "; ".join(f"{C.short_env(e)}: {a:.2f} vs {b:.2f}" for e, (a, b) in ret.items()),
                all(a < b for a, b in ret.values())),
        C.Claim("dataset_size.2", f"With the smallest fraction ({smallest:g}) srank ends lower than with {full:g}",
                "seed-mean final srank, smallest vs largest fraction, per env",
                "; ".join(f"{C.short_env(e)}: {a:.1f} vs {b:.1f}" for e, (a, b) in rank.items()),
                all(a < b for a, b in rank.values())),
        C.Claim("dataset_size.3", "The srank ordering and the return ordering of the fractions disagree somewhere "
                "along training", "Kendall tau(srank order, return order) per evaluation: min (mean), per env",
                "; ".join(f"{C.short_env(e)}: {np.nanmin(t):.2f} ({np.nanmean(t):.2f})" for e, t in tau.items()),
                all(np.nanmin(t) < 1 for t in tau.values())),
    ]


# ------------------------------------------------------------------------------------------------
# Figure
# ------------------------------------------------------------------------------------------------


def plot_dataset_size(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 6: srank, return and dead units per fraction, and the ordering agreement."""
    envs = m.values("env")
    fig, axes = plt.subplots(4, len(envs), figsize=(4.4 * len(envs), 10), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        colors = plt.cm.plasma(np.linspace(0.0, 0.85, len(fractions(m, env))))
        for f, color in zip(fractions(m, env), colors):
            for i, metric in enumerate(("srank", "return", "dead_units")):
                C.plot_band(axes[i, j], *m.curves(env=env, fraction=f, metric=metric),
                            f"{f:.0%} of the data" if i == 0 else None, color)
        steps, tau = ordering_agreement(m, env)
        axes[3, j].plot(steps, tau, marker="o", ms=3, color="k")
        axes[3, j].axhline(1.0, color="0.6", lw=0.8, ls="--")
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return")
        axes[2, j].set(ylabel="dead units")
        axes[3, j].set(ylabel="Kendall tau\n(srank order vs return order)", xlabel="gradient steps", ylim=(-1.05, 1.05))
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 6: offline double DQN on fractions of one dataset ({C.seeds_note(m, env=envs[0])})")
    C.save_figure(fig, out, "fig06_dataset_size")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plot_dataset_size(C.plot_setup(), m, out)


STUDY = C.Study("exp_dataset_size", __doc__.split("\n\n")[0], PRESETS, run, claims, plot)

if __name__ == "__main__":
    C.main(STUDY)

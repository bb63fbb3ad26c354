"""How the amount of data shapes rank and performance (Section 4.2, Figure 6 of Gulcehre et al. 2022).

    make exp_dataset_size                     # cpu preset: MinAtar breakout and space_invaders
    python exp_dataset_size.py --preset paper --data-dir /data/dqn_replay   # Atari Asterix, Zaxxon
    python exp_dataset_size.py --plot-only    # redraw from results/exp_dataset_size/metrics.csv

Protocol. One dataset per environment; the transitions are put in one seeded random order and an
agent trained on fraction f sees the first f of them (5%, 10%, 25%, 50%, 100%). The subsets are
therefore nested and identical across seeds, as with one subsampling seed in the paper. Offline
double DQN with ReLU trains on each fraction; all fractions x seeds are one vmapped program (each
member samples minibatches from its own prefix of the shared order). Recorded: srank, dead units
and online return along training, and Kendall's tau between the ordering of the fractions by srank
and by return at each evaluation (the paper notes the two orderings disagree).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import common as C


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(C.OfflineStudyConfig):
    fractions: tuple[float, ...]
    learning_rate: float
    subsample_seed: int = 0


FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)

PRESETS = {
    # MinAtar (image observations, the MinAtar CNN) with locally collected 50k-transition datasets:
    # 5 fractions x 2 seeds train as one program at ~550 member-steps/s on 2 CPU cores, so 2e4 steps
    # per run on two games fit ~15 minutes. Batch 32, Adam 3e-4 (the paper's bsuite rate), discount 0.99.
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


@dataclasses.dataclass(frozen=True)
class Args(C.StudyArgs):
    """Offline double DQN on 5%..100% of one dataset: srank, dead units and return over training."""

    num_steps: int | None = None
    """Gradient steps per run."""
    fractions: tuple[float, ...] | None = None
    """Fractions of the dataset's transitions to train on."""
    dataset_size: int | None = None
    """Transitions collected for bsuite/MinAtar datasets (the 100% dataset)."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""


def frac_label(fraction: float) -> str:
    return f"frac={fraction:g}"


def run(cfg: Config, out: Path) -> None:
    C.check_env_ids(cfg.env)
    rows = []
    for env_id in cfg.env:
        ds = cfg.dataset(env_id)
        # One seeded order of the transitions; fraction f trains on its first f (nested subsets).
        order = np.asarray(ds.valid)[np.random.default_rng(cfg.subsample_seed).permutation(len(ds))]
        members = [C.Member(seed=s, learning_rate=cfg.learning_rate, config=frac_label(f),
                            data_size=max(cfg.batch_size, int(round(f * len(ds)))))
                   for s in range(cfg.seeds) for f in cfg.fractions]
        net = C.default_network(env_id, ds.num_actions)
        result = C.train_offline(net, ds, cfg.train_config(), members, env_id=env_id, agent="dqn", order=order,
                                 evaluate_fn=cfg.evaluator(net, env_id), checkpoint_dir=out / "checkpoints",
                                 run_name="exp_dataset_size")
        rows += result.rows
    C.write_metrics(out, rows)


# ------------------------------------------------------------------------------------------------
# Claims and the ordering statistic, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def ordering_agreement(m: C.Metrics, env: str) -> tuple[np.ndarray, np.ndarray]:
    """Kendall's tau between the seed-mean srank and the seed-mean return of the fractions, at
    every evaluation step after the start."""
    configs = m.values("config", env=env)
    steps = np.asarray(sorted({r["step"] for r in m.select(env=env, metric="return") if r["step"] > 0}))
    taus = []
    for step in steps:
        srank = [np.nanmean(m.at_step(step, env=env, config=c, metric="srank")) for c in configs]
        ret = [np.nanmean(m.at_step(step, env=env, config=c, metric="return")) for c in configs]
        taus.append(C.kendall_tau(srank, ret))
    return steps, np.asarray(taus)


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    envs = m.values("env")
    ret, rank, tau = {}, {}, {}
    for env in envs:
        configs = sorted(m.values("config", env=env), key=lambda c: float(c.split("=")[1]))
        smallest, full = configs[0], configs[-1]
        ret[env] = (np.nanmean(m.final(env=env, config=smallest, metric="return")),
                    np.nanmean(m.final(env=env, config=full, metric="return")))
        rank[env] = (np.nanmean(m.final(env=env, config=smallest, metric="srank")),
                     np.nanmean(m.final(env=env, config=full, metric="srank")))
        tau[env] = ordering_agreement(m, env)[1]
    short = lambda e: e.split("/")[-1]
    return [
        C.Claim("dataset_size.1", f"With the smallest fraction ({smallest}) the final return is lower than with {full}",
                "seed-mean final return, smallest vs largest fraction, per env",
                "; ".join(f"{short(e)}: {a:.2f} vs {b:.2f}" for e, (a, b) in ret.items()),
                all(a < b for a, b in ret.values())),
        C.Claim("dataset_size.2", f"With the smallest fraction ({smallest}) srank ends lower than with {full}",
                "seed-mean final srank, smallest vs largest fraction, per env",
                "; ".join(f"{short(e)}: {a:.1f} vs {b:.1f}" for e, (a, b) in rank.items()),
                all(a < b for a, b in rank.values())),
        C.Claim("dataset_size.3", "The srank ordering and the return ordering of the fractions disagree somewhere "
                "along training", "Kendall tau(srank order, return order) per evaluation: min (mean), per env",
                "; ".join(f"{short(e)}: {np.nanmin(t):.2f} ({np.nanmean(t):.2f})" for e, t in tau.items()),
                all(np.nanmin(t) < 1 for t in tau.values())),
    ]


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    envs = m.values("env")
    note = C.seeds_note(m, env=envs[0])
    fig, axes = plt.subplots(4, len(envs), figsize=(4.4 * len(envs), 10), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        configs = sorted(m.values("config", env=env), key=lambda c: float(c.split("=")[1]))
        colors = plt.cm.plasma(np.linspace(0.0, 0.85, len(configs)))
        for config, color in zip(configs, colors):
            label = f"{float(config.split('=')[1]):.0%} of the data"
            for i, metric in enumerate(("srank", "return", "dead_units")):
                C.plot_band(axes[i, j], *m.curves(env=env, config=config, metric=metric), label if i == 0 else None,
                            color)
        steps, tau = ordering_agreement(m, env)
        axes[3, j].plot(steps, tau, marker="o", ms=3, color="k")
        axes[3, j].axhline(1.0, color="0.6", lw=0.8, ls="--")
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return")
        axes[2, j].set(ylabel="dead units")
        axes[3, j].set(ylabel="Kendall tau\n(srank order vs return order)", xlabel="gradient steps", ylim=(-1.05, 1.05))
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 6: offline double DQN on fractions of one dataset ({note})")
    C.save_figure(fig, out, "fig06_dataset_size")


def main(args: Args) -> None:
    C.run_study(args, PRESETS, run=run, claims=claims, plot=plot)


if __name__ == "__main__":
    C.cli(Args, main)

"""DQN against behaviour cloning: rank, returns, and robustness to evaluation-time input
perturbations (Sections 7, 8.1 and 11; Figures 13, 15, 21 and 22 of Gulcehre et al. 2022).

    make exp_robustness                       # cpu preset: MinAtar games, datasets collected locally
    python exp_robustness.py --preset paper --data-dir /data/dqn_replay   # the paper's six Atari games
    python exp_robustness.py --plot-only      # redraw from results/exp_robustness/metrics.csv

Protocol. Offline double DQN and behaviour cloning train on the same dataset with the same network
body (BC reads the Q head as logits), plus BC at a large learning rate (Fig. 13: dead units and
rank collapse are not unique to TD losses). After training, every agent is evaluated with its
observations perturbed at evaluation time only (the training data stay clean):

- random shift (DrQ, Yarats et al. 2020): pad by p cells replicating the edge, crop a random window;
- random scaling: zoom by a factor drawn from [1 - s, 1 + s] about the centre.

Robustness score of an agent at level sigma: (R_sigma - b) / (R_0 - b), its mean return under the
perturbation relative to its unperturbed mean return, with b = min(0, lowest return seen in that
environment) so that scores are non-negative where returns can be negative (the paper shifted
IceHockey's scores for the same reason). 1 = unaffected, 0 = reduced to the floor.
On MinAtar's 10x10 grid one cell is 10% of the image, so shifts are 1-2 cells and scalings reach
+-40% (smaller zooms move no cell); Atari (84x84) uses the paper's pixel shifts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import common as C


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(C.OfflineStudyConfig):
    perturbed_episodes: int
    dqn_learning_rate: float
    bc_learning_rates: tuple[float, ...]  # the default rate and a large one (Fig. 13)
    shift_levels: tuple[int, ...]
    scale_levels: tuple[float, ...]


PRESETS = {
    # The MinAtar CNN trains at ~1,000 member-steps/s on 2 CPU cores: 4e4 steps per run (DQN 2 seeds,
    # BC 2 rates x 2 seeds) on two games fit ~15 minutes. Batch 32, Adam, discount 0.99 as in the paper.
    "cpu": Config(env=("minatar/breakout", "minatar/space_invaders"), seeds=2, num_steps=40_000, chunk_steps=500,
                  eval_every=2_500, eval_episodes=8, perturbed_episodes=16, dqn_learning_rate=3e-4,
                  bc_learning_rates=(3e-4, 3e-2), batch_size=32, target_update_period=1_000, dataset_noise=0.1,
                  dataset_size=50_000, shift_levels=(0, 1, 2), scale_levels=(0.0, 0.2, 0.4)),
    "paper": Config(env=tuple(f"atari/{g}" for g in ("BeamRider", "IceHockey", "MsPacman", "DemonAttack", "Robotank",
                                                     "RoadRunner")),
                    seeds=5, num_steps=2_000_000, chunk_steps=10_000, eval_every=200_000, eval_episodes=10,
                    perturbed_episodes=10, dqn_learning_rate=3e-5, bc_learning_rates=(3e-5, 3e-3), batch_size=256,
                    target_update_period=2_500, dataset_noise=0.0, dataset_size=0, shift_levels=(0, 2, 4, 8),
                    scale_levels=(0.0, 0.1, 0.2, 0.3), replay_checkpoints=(0, 1, 2, 3)),
    "smoke": Config(env=("minatar/breakout",), seeds=2, num_steps=400, chunk_steps=200, eval_every=200,
                    eval_episodes=2, perturbed_episodes=2, dqn_learning_rate=3e-4, bc_learning_rates=(3e-4, 3e-2),
                    batch_size=32, target_update_period=100, dataset_noise=0.1, dataset_size=2_000,
                    shift_levels=(0, 1), scale_levels=(0.0, 0.4)),
}


@dataclasses.dataclass(frozen=True)
class Args(C.StudyArgs):
    """Offline DQN vs behaviour cloning: rank, returns, robustness to shifted and scaled observations."""

    num_steps: int | None = None
    """Gradient steps per run."""
    shift_levels: tuple[int, ...] | None = None
    """Random-shift paddings, in cells or pixels (0 = unperturbed)."""
    scale_levels: tuple[float, ...] | None = None
    """Random-scaling strengths s: zoom factors from [1 - s, 1 + s] (0 = unperturbed)."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""


PERTURBATIONS = {"shift": C.random_shift, "scale": C.random_scale}


def perturbed_metric(kind: str, level: float) -> str:
    return f"return@{kind}={level:g}"


def run(cfg: Config, out: Path) -> None:
    C.check_env_ids(cfg.env)
    if any(e.startswith("bsuite/") for e in cfg.env):
        raise ValueError("the robustness study perturbs images: use minatar/<game> or atari/<Game> ids")
    rows = []
    for env_id in cfg.env:
        ds = cfg.dataset(env_id)
        net = C.default_network(env_id, ds.num_actions)
        agents = {
            "dqn": [C.Member(s, cfg.dqn_learning_rate, f"lr={cfg.dqn_learning_rate:g}") for s in range(cfg.seeds)],
            "bc": [C.Member(s, lr, f"lr={lr:g}") for s in range(cfg.seeds) for lr in cfg.bc_learning_rates],
        }
        for agent, members in agents.items():
            result = C.train_offline(net, ds, cfg.train_config("double_dqn" if agent == "dqn" else "bc"), members,
                                     env_id=env_id, agent=agent, evaluate_fn=cfg.evaluator(net, env_id),
                                     checkpoint_dir=out / "checkpoints", run_name="exp_robustness")
            rows += result.rows
            rows += perturbed_returns(cfg, env_id, net, agent, members, result.state.params)
    C.write_metrics(out, rows)


def perturbed_returns(cfg: Config, env_id: str, net, agent: str, members, params) -> list[dict]:
    """Mean return of every member under each perturbation and level (evaluation time only)."""
    rows = []
    axes = C.image_axes(env_id)
    for kind, levels in (("shift", cfg.shift_levels), ("scale", cfg.scale_levels)):
        for level in levels:
            perturb = PERTURBATIONS[kind]
            returns = C.evaluate_policies(net, params, env_id, cfg.perturbed_episodes, seed=20_000,
                                          obs_transform=lambda key, obs: perturb(key, obs, level, axes)).mean(axis=1)
            rows += [{"env": env_id, "agent": agent, "config": m.config, "seed": m.seed, "step": cfg.num_steps,
                      "metric": perturbed_metric(kind, level), "value": float(r)} for m, r in zip(members, returns)]
    return rows


# ------------------------------------------------------------------------------------------------
# Robustness scores and claims, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def levels(m: C.Metrics, kind: str) -> list[float]:
    prefix = f"return@{kind}="
    return sorted({float(r["metric"][len(prefix):]) for r in m.rows if r["metric"].startswith(prefix)})


def robustness(m: C.Metrics, env: str, agent: str, config: str, kind: str) -> tuple[list[float], np.ndarray]:
    """(levels, scores[seed, level]): (R_level - b) / (R_0 - b) per seed, b = min(0, lowest return)."""
    env_returns = [r["value"] for r in m.select(env=env) if r["metric"].startswith("return")]
    floor = min(0.0, float(np.nanmin(env_returns)))
    lv = levels(m, kind)
    returns = np.stack([m.final(env=env, agent=agent, config=config, metric=perturbed_metric(kind, x)) for x in lv],
                       axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = (returns - floor) / (returns[:, :1] - floor)
    return lv, np.where(np.isfinite(scores), scores, np.nan)


def default_bc_config(m: C.Metrics, env: str) -> str:
    return min(m.values("config", env=env, agent="bc"), key=lambda c: float(c.split("=")[1]))


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    envs = m.values("env")
    short = lambda e: e.split("/")[-1]
    rank, ret, robust = {}, {}, {"shift": {}, "scale": {}}
    for env in envs:
        dqn, bc = m.values("config", env=env, agent="dqn")[0], default_bc_config(m, env)
        rank[env] = (np.nanmean(m.final(env=env, agent="bc", config=bc, metric="srank")),
                     np.nanmean(m.final(env=env, agent="dqn", config=dqn, metric="srank")))
        ret[env] = (np.nanmean(m.final(env=env, agent="dqn", config=dqn, metric="return")),
                    np.nanmean(m.final(env=env, agent="bc", config=bc, metric="return")))
        for kind in robust:
            _, d = robustness(m, env, "dqn", dqn, kind)
            _, b = robustness(m, env, "bc", bc, kind)
            wins = C.mean_and_stderr(d)[0][1:] > C.mean_and_stderr(b)[0][1:]  # perturbed levels only
            robust[kind][env] = (int(wins.sum()), len(wins))
    majority = lambda d: all(w > n / 2 for w, n in d.values())
    return [
        C.Claim("robustness.1", "BC's final srank is higher than DQN's", "seed-mean final srank, BC vs DQN, per env",
                "; ".join(f"{short(e)}: {a:.1f} vs {b:.1f}" for e, (a, b) in rank.items()),
                all(a > b for a, b in rank.values())),
        C.Claim("robustness.2", "DQN's final return is at least BC's", "seed-mean final return, DQN vs BC, per env",
                "; ".join(f"{short(e)}: {a:.2f} vs {b:.2f}" for e, (a, b) in ret.items()),
                all(a >= b for a, b in ret.values())),
        C.Claim("robustness.3", "DQN's robustness score is higher than BC's for random shifts and for random scaling, "
                "at most levels", "perturbed levels where DQN's seed-mean score beats BC's, per env",
                "; ".join(f"{kind} {short(e)}: {w}/{n}" for kind in robust for e, (w, n) in robust[kind].items()),
                majority(robust["shift"]) and majority(robust["scale"])),
    ]


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    envs = m.values("env")
    note = C.seeds_note(m, env=envs[0], agent="dqn")
    runs = lambda env: [("dqn", c) for c in m.values("config", env=env, agent="dqn")] + \
                       [("bc", c) for c in m.values("config", env=env, agent="bc")]

    # Fig. 15 (+ Fig. 13): srank, return and dead units over training.
    fig, axes = plt.subplots(3, len(envs), figsize=(4.4 * len(envs), 8), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        for agent, config in runs(env):
            label = f"{'DQN' if agent == 'dqn' else 'BC'} {config}"
            for i, metric in enumerate(("srank", "return", "dead_units")):
                C.plot_band(axes[i, j], *m.curves(env=env, agent=agent, config=config, metric=metric),
                            label if i == 0 else None, ls="-" if agent == "dqn" else "--")
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return")
        axes[2, j].set(ylabel="dead units", xlabel="gradient steps")
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 13/15: offline DQN and behaviour cloning on the same data ({note})")
    C.save_figure(fig, out, "fig15_dqn_vs_bc")

    # Fig. 21 / 22: robustness scores against perturbation level.
    for kind, number, title in (("shift", 21, "random shift (cells or pixels of padding)"),
                                ("scale", 22, "random scaling strength s (zoom in [1-s, 1+s])")):
        fig, axes = plt.subplots(1, len(envs), figsize=(4.4 * len(envs), 3.4), squeeze=False)
        for j, env in enumerate(envs):
            for agent, config in runs(env):
                lv, scores = robustness(m, env, agent, config, kind)
                mean, err = C.mean_and_stderr(scores)
                axes[0, j].errorbar(lv, mean, err, marker="o", ms=3, capsize=2,
                                    ls="-" if agent == "dqn" else "--", label=f"{agent.upper()} {config}")
            axes[0, j].axhline(1.0, color="0.6", lw=0.8, ls=":")
            axes[0, j].set(title=env, xlabel=title, ylabel="robustness score (R_level / R_0)")
        axes[0, 0].legend()
        fig.suptitle(f"Fig. {number}: evaluation-time {kind} perturbations ({note})")
        C.save_figure(fig, out, f"fig{number}_random_{kind}")


def main(args: Args) -> None:
    C.run_study(args, PRESETS, run=run, claims=claims, plot=plot)


if __name__ == "__main__":
    C.cli(Args, main)

"""DQN against behaviour cloning: rank, returns, and robustness to evaluation-time input
perturbations (Sections 7, 8.1 and 11; Figures 13, 15, 21 and 22 of Gulcehre et al. 2022).

Figures: 13/15 (srank, return and dead units of offline DQN and BC, and BC at a large learning
rate), 21 (robustness to random shifts), 22 (robustness to random scaling).

    make exp_robustness                       # cpu preset: MinAtar games, datasets collected locally
    python exp_robustness.py --preset paper --data-dir /data/dqn_replay   # the paper's six Atari games
    python exp_robustness.py --plot-only      # redraw from results/exp_robustness/metrics.csv
    python exp_robustness.py --help           # every setting, with the chosen preset's value

Robustness score of an agent at perturbation level sigma (the paper's equation is missing from
its text): (R_sigma - b) / (R_0 - b), its mean return under the perturbation relative to its
unperturbed mean return, with b = min(0, lowest return seen in that environment) so that scores
are non-negative where returns can be negative (the paper shifted IceHockey's scores for the same
reason). 1 = unaffected, 0 = reduced to the floor. On MinAtar's 10x10 grid one cell is 10% of the
image, so shifts are 1-2 cells and scalings reach +-40% (smaller zooms move no cell); Atari
(84x84) uses pixel shifts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

import common as C


@dataclasses.dataclass(frozen=True)
class Config:
    """Offline DQN vs behaviour cloning: rank, returns, robustness to shifted and scaled observations."""

    env: tuple[str, ...]
    """Environment ids with image observations (minatar/<game>, atari/<Game>)."""
    seeds: int
    """Training seeds per agent."""
    dqn_learning_rate: float
    """Adam learning rate of offline DQN."""
    bc_learning_rates: tuple[float, ...]
    """Adam learning rates of BC: the default one and a large one (Fig. 13)."""
    num_steps: int
    """Gradient steps per run."""
    chunk_steps: int
    """Gradient steps per compiled call; the probe metrics are taken after each."""
    eval_every: int
    """Gradient steps between online evaluations."""
    eval_episodes: int
    """Greedy evaluation episodes per member and evaluation."""
    perturbed_episodes: int
    """Evaluation episodes per member at each perturbation level, after training."""
    shift_levels: tuple[int, ...]
    """Random-shift paddings, in cells or pixels (0 = unperturbed)."""
    scale_levels: tuple[float, ...]
    """Random-scaling strengths s: zoom factors from [1 - s, 1 + s] (0 = unperturbed)."""
    batch_size: int
    """Minibatch size."""
    target_update_period: int
    """Gradient steps between target-network updates (DQN)."""
    dataset_noise: float
    """bsuite/MinAtar collection: probability of a random action in the behaviour policy."""
    dataset_size: int
    """bsuite/MinAtar collection: transitions in the dataset."""
    early_chunk_steps: int = 0
    """Finer chunks over the first chunk (0: none)."""
    gamma: float = 0.99
    """Discount (DQN)."""
    optimizer: C.Optimizer = "adam"
    """Optimizer."""
    probe_size: int = 512
    """States in the fixed probe batch."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""
    replay_checkpoints: tuple[int, ...] = (0,)
    """Atari: which DQN Replay checkpoints to read (a run has 50)."""
    replay_resident: int = 4
    """Atari: DQN Replay checkpoints on the device at a time (Dopamine's fixed replay buffer; ~7.1 GB each)."""
    replay_swap_every: int = 100_000
    """Atari: gradient steps between swaps of one resident checkpoint for another."""

    checkpoint_seconds: float = 60.0
    """Wall seconds between checkpoints: a killed run resumes from the last one."""

    def check(self) -> None:
        C.require(self.checkpoint_seconds >= 0, "--checkpoint-seconds must be >= 0")
        C.check_env_ids(self.env)
        C.require_positive(self, "replay_resident", "replay_swap_every")
        C.require(not any(e.startswith("bsuite/") for e in self.env),
                  "the robustness study perturbs images: use minatar/<game> or atari/<Game> ids")
        C.require_positive(self, "seeds", "dqn_learning_rate", "bc_learning_rates", "num_steps", "chunk_steps",
                           "eval_every", "eval_episodes", "perturbed_episodes", "batch_size", "target_update_period",
                           "probe_size")
        C.require(0 in self.shift_levels and 0 in self.scale_levels,
                  "--shift-levels and --scale-levels must include 0 (the unperturbed reference)")
        C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        C.require_multiple(self, "num_steps", "chunk_steps")
        C.require_multiple(self, "eval_every", "chunk_steps")


PRESETS = {
    # The paper's 5 seeds: with fewer, the one-sided sign-flip test cannot reach p < 0.05 (2 seeds: p >= 1/4),
    # so no claim could be held or not held. 4e4 steps per run (DQN, and BC at 2 rates, 5 seeds each) on two
    # games; the README's run-times table has the time. Batch 32, Adam, discount 0.99 as in the paper; the
    # target network is updated every 1,000 steps.
    "cpu": Config(env=("minatar/breakout", "minatar/space_invaders"), seeds=5, num_steps=40_000, chunk_steps=500,
                  eval_every=2_500, eval_episodes=8, perturbed_episodes=16, dqn_learning_rate=3e-4,
                  bc_learning_rates=(3e-4, 3e-2), batch_size=32, target_update_period=1_000, dataset_noise=0.1,
                  dataset_size=50_000, shift_levels=(0, 1, 2), scale_levels=(0.0, 0.2, 0.4)),
    # MinAtar at the paper's bsuite length, 1e6 gradient steps, and its 5 seeds: for a GPU (hours on a CPU).
    "long": Config(env=("minatar/breakout", "minatar/space_invaders"), seeds=5, num_steps=1_000_000, chunk_steps=5_000,
                   eval_every=50_000, eval_episodes=10, perturbed_episodes=16, dqn_learning_rate=3e-4,
                   bc_learning_rates=(3e-4, 3e-2), batch_size=32, target_update_period=1_000, dataset_noise=0.1,
                   dataset_size=1_000_000, shift_levels=(0, 1, 2), scale_levels=(0.0, 0.2, 0.4)),
    "paper": Config(env=tuple(f"atari/{g}" for g in ("BeamRider", "IceHockey", "MsPacman", "DemonAttack", "Robotank",
                                                     "RoadRunner")),
                    seeds=5, num_steps=2_000_000, chunk_steps=10_000, eval_every=200_000, eval_episodes=10,
                    perturbed_episodes=10, dqn_learning_rate=3e-5, bc_learning_rates=(3e-5, 3e-3), batch_size=256,
                    target_update_period=2_500, dataset_noise=0.0, dataset_size=0, shift_levels=(0, 2, 4, 8),
                    scale_levels=(0.0, 0.1, 0.2, 0.3), replay_checkpoints=tuple(range(50))),
    "smoke": Config(env=("minatar/breakout",), seeds=2, num_steps=400, chunk_steps=200, eval_every=200,
                    eval_episodes=2, perturbed_episodes=2, dqn_learning_rate=3e-4, bc_learning_rates=(3e-4, 3e-2),
                    batch_size=32, target_update_period=100, dataset_noise=0.1, dataset_size=2_000,
                    shift_levels=(0, 1), scale_levels=(0.0, 0.4)),
}


# ------------------------------------------------------------------------------------------------
# The study's own pieces: evaluation-time perturbations
# ------------------------------------------------------------------------------------------------


def random_scale(key: jax.Array, obs: jax.Array, strength: float, axes: tuple[int, int] = (1, 2)) -> jax.Array:
    """Random scaling (as in Chen et al. 2017's augmentation): zoom each image by a factor drawn
    uniformly from [1 - strength, 1 + strength] about its centre, resampled bilinearly onto the
    original grid (zooming in crops; zooming out fills the border with zeros, MinAtar's empty
    cell). Shape and dtype kept (integer images are rounded back); the identity when strength is
    0. On a 10x10 grid a factor changes pixels only once it moves the border by about half a cell."""
    if isinstance(strength, (int, float)) and strength == 0:
        return obs
    factors = jax.random.uniform(key, (obs.shape[0],), minval=1.0 - strength, maxval=1.0 + strength)
    size = jnp.asarray([obs.shape[axes[0]], obs.shape[axes[1]]], jnp.float32)
    dims = (axes[0] - 1, axes[1] - 1)

    def zoom(image, factor):
        scale = jnp.stack([factor, factor])
        out = jax.image.scale_and_translate(image.astype(jnp.float32), image.shape, dims, scale,
                                            (1.0 - scale) * size / 2, method="linear")
        return jnp.round(out).astype(image.dtype) if jnp.issubdtype(image.dtype, jnp.integer) else out.astype(image.dtype)

    return jax.vmap(zoom)(obs, factors)


@flax.struct.dataclass
class Perturbation:
    """An evaluation-time observation perturbation: ``kind`` (shift or scale) at ``level``. The level
    is a pytree leaf, so the evaluator compiles one policy per kind, not one per level (compiling
    took ~1 s per level and agent, as long as playing the episodes)."""

    kind: str = flax.struct.field(pytree_node=False)
    level: float
    axes: tuple[int, int] = flax.struct.field(pytree_node=False)

    def __call__(self, key: jax.Array, obs: jax.Array) -> jax.Array:
        if self.kind == "shift":
            return C.random_shift(key, obs, self.level, self.axes)
        return random_scale(key, obs, self.level, self.axes)


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> None:
    """Per environment: one dataset; offline double DQN (Huber TD loss, target network) and
    behaviour cloning (cross-entropy of the logged action, the same network's Q head read as
    logits) train on it, DQN at one learning rate, BC at the default and a large one, seeds
    vmapped. Every chunk the probe metrics, every ``eval_every`` steps the greedy return. After
    training each agent is evaluated with its observations perturbed at every level (the
    training data stay clean)."""
    rows = []
    for env_id in cfg.env:
        with timings("collect"):
            ds = C.replay_data(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size,
                               data_dir=cfg.data_dir, checkpoints=cfg.replay_checkpoints,
                               resident=cfg.replay_resident, swap_every=cfg.replay_swap_every)
        net = C.default_network(env_id, ds.num_actions, activation="relu")
        train = C.TrainConfig(num_steps=cfg.num_steps, chunk_steps=cfg.chunk_steps,
                              early_chunk_steps=cfg.early_chunk_steps, batch_size=cfg.batch_size,
                              optimizer=cfg.optimizer, target_update_period=cfg.target_update_period,
                              probe_size=cfg.probe_size, eval_every=cfg.eval_every,
                              checkpoint_seconds=cfg.checkpoint_seconds)
        agents = {
            "dqn": (C.DoubleDQN(gamma=cfg.gamma, clip_rewards=env_id.startswith("atari/")), [cfg.dqn_learning_rate]),
            "bc": (C.BehaviourCloning(), list(cfg.bc_learning_rates)),
        }
        for agent, (loss, rates) in agents.items():
            members = [C.Member(seed=s, learning_rate=lr, columns={"lr": lr}) for s in range(cfg.seeds) for lr in rates]
            columns = {"study": "robustness", "env": env_id, "agent": agent}
            result = C.train_offline(net, ds, loss, members, train, evaluate=C.Evaluator(env_id, cfg.eval_episodes),
                                     columns=columns, checkpoints=out / "checkpoints", timings=timings)
            rows += result.rows
            with timings("evaluate"):
                rows += perturbed_returns(cfg, env_id, net, columns, members, result.state.params)
    C.write_metrics(out, rows)


def perturbed_returns(cfg: Config, env_id: str, net, columns: dict, members, params) -> list[dict]:
    """Mean return of every member under each perturbation and level (evaluation time only),
    as rows of the metric ``return_perturbed`` with the typed columns ``perturbation`` and ``level``.
    Level 0 of either kind is the clean observation and the policies are greedy, so its episodes
    are played once and reported under both kinds (the same returns, one evaluation fewer)."""
    rows, clean = [], None
    for kind, levels in (("shift", cfg.shift_levels), ("scale", cfg.scale_levels)):
        for level in levels:
            if level == 0 and clean is not None:
                returns = clean
            else:
                evaluate = C.Evaluator(env_id, cfg.perturbed_episodes, seed=C.PERTURBED_EVAL_SEED,
                                       transform=Perturbation(kind, level, C.image_axes(env_id)))
                returns = evaluate(net, params)["return"]
                clean = returns if level == 0 else clean
            rows += [{**columns, **m.columns, "seed": m.seed, "perturbation": kind, "level": float(level),
                      "step": cfg.num_steps, "metric": "return_perturbed", "value": float(r)}
                     for m, r in zip(members, returns)]
    return rows


# ------------------------------------------------------------------------------------------------
# Robustness scores and claims, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def levels(m: C.Metrics, kind: str) -> list[float]:
    return sorted(m.values("level", perturbation=kind))


def robustness(m: C.Metrics, env: str, agent: str, lr: float, kind: str) -> tuple[list[float], np.ndarray]:
    """(levels, scores[seed, level]): (R_level - b) / (R_0 - b) per seed, b = min(0, lowest return)."""
    env_returns = m.value[np.concatenate([m.mask(env=env, metric="return"), m.mask(env=env, metric="return_perturbed")])]
    floor = min(0.0, float(np.nanmin(env_returns)))
    lv = levels(m, kind)
    returns = np.stack([m.last(env=env, agent=agent, lr=lr, perturbation=kind, level=x, metric="return_perturbed")
                        for x in lv], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = (returns - floor) / (returns[:, :1] - floor)
    return lv, np.where(np.isfinite(scores), scores, np.nan)


def paired(m: C.Metrics, env: str) -> tuple[dict, dict, dict]:
    """The DQN run, and BC at its default (smallest) and large (largest) learning rate, of ``env``."""
    bc = sorted(m.values("lr", env=env, agent="bc"))
    return ({"env": env, "agent": "dqn", "lr": m.values("lr", env=env, agent="dqn")[0]},
            {"env": env, "agent": "bc", "lr": bc[0]}, {"env": env, "agent": "bc", "lr": bc[-1]})


# A collapse, as common's phase rules define one: the srank falls to at most half its initial value.
COLLAPSED = C.EARLY_DROP


def claim_bc_rank(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env"):
        dqn, bc, _ = paired(m, env)
        kept = {agent: C.final_values(m, "srank", **where) / m.at_step(0, metric="srank", **where)
                for agent, where in (("dqn", dqn), ("bc", bc))}
        # The paper says two things: DQN's rank collapses, and BC's does not. That BC merely ends higher
        # would also hold when neither collapses.
        evidence.append(C.every_part(env, {
            "DQN collapses": C.directional(env, kept["dqn"], "less", null=COLLAPSED),
            "BC does not": C.directional(env, kept["bc"], "greater", null=COLLAPSED)}))
    return C.Claim(
        "robustness.bc_rank", "With default hyperparameters the BC agent's effective rank does not collapse at the "
        "end of training, while DQN's does (Sections 8.1 and 11, Fig. 15).", "per seed, final srank over the srank "
        f"at initialisation: (1) DQN's; (2) BC's (at its default learning rate); a collapse is a fall to "
        f"{COLLAPSED:g} or less, as in the phase rules", f"held if (1) < {COLLAPSED:g} and (2) > {COLLAPSED:g} "
        f"(one-sided sign-flip tests against {COLLAPSED:g}, p < 0.05); not held if either is on the other side by "
        "the same test; the value shown is the deciding part's", tuple(evidence))


def claim_dqn_return(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env"):
        dqn, bc, _ = paired(m, env)
        evidence.append(C.directional(env, C.final_values(m, "return", **dqn) - C.final_values(m, "return", **bc),
                                      "greater"))
    return C.Claim(
        "robustness.dqn_return", "DQN outperforms BC even if its rank is considerably lower (Section 8.1, "
        "Fig. 15).", "per seed, final return of DQN minus BC's (default learning rate)", "held if > 0 (one-sided "
        "sign-flip test, p < 0.05); not held if < 0", tuple(evidence))


def claim_robustness(m: C.Metrics, kind: str) -> C.Claim:
    evidence = []
    for env in m.values("env"):
        dqn, bc, _ = paired(m, env)
        score = lambda where: np.nanmean(robustness(m, env, where["agent"], where["lr"], kind)[1][:, 1:], axis=1)
        evidence.append(C.directional(env, score(dqn) - score(bc), "greater"))
    name = {"shift": "random shifts (Fig. 21)", "scale": "random scaling (Fig. 22)"}[kind]
    return C.Claim(
        f"robustness.{kind}", f"DQN is more robust than BC to evaluation-time {name} (Section 11).",
        "per seed, the robustness score (R_level - b) / (R_0 - b) averaged over the perturbed levels: DQN's minus "
        "BC's (default learning rate)", "held if > 0 (one-sided sign-flip test, p < 0.05); not held if < 0",
        tuple(evidence))


def claim_bc_large_lr(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env"):
        _, bc, large = paired(m, env)
        evidence.append(C.directional(env, C.final_values(m, "dead_units", **large)
                                      - C.final_values(m, "dead_units", **bc), "greater",
                                      note=f"lr {large['lr']:g} - lr {bc['lr']:g}"))
    return C.Claim(
        "robustness.bc_large_lr", "Even in BC, large learning rates cause dead ReLU units (Section 7, Fig. 13).",
        "per seed, final dead units of BC at the large learning rate minus at the default one", "held if > 0 "
        "(one-sided sign-flip test, p < 0.05); not held if < 0", tuple(evidence))


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    return [claim_bc_rank(m), claim_dqn_return(m), claim_robustness(m, "shift"), claim_robustness(m, "scale"),
            claim_bc_large_lr(m)]


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def agents_of(m: C.Metrics, env: str) -> list[tuple[str, float]]:
    return [("dqn", lr) for lr in m.values("lr", env=env, agent="dqn")] + \
           [("bc", lr) for lr in m.values("lr", env=env, agent="bc")]


def plot_dqn_vs_bc(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 13/15: srank, return and dead units over training."""
    envs = m.values("env")
    fig, axes = plt.subplots(3, len(envs), figsize=(4.4 * len(envs), 8), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        for agent, lr in agents_of(m, env):
            for i, metric in enumerate(("srank", "return", "dead_units")):
                C.plot_band(axes[i, j], *m.curves(env=env, agent=agent, lr=lr, metric=metric),
                            f"{agent.upper()} lr={lr:g}" if i == 0 else None, ls="-" if agent == "dqn" else "--")
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return")
        axes[2, j].set(ylabel="dead units", xlabel="gradient steps")
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 13/15: offline DQN and behaviour cloning on the same data "
                 f"({C.seeds_note(m, env=envs[0], agent='dqn')})")
    C.save_figure(fig, out, "fig15_dqn_vs_bc")


def plot_robustness(plt, m: C.Metrics, out: Path, kind: str, number: int, title: str) -> None:
    """Fig. 21 / 22: robustness scores against perturbation level."""
    envs = m.values("env")
    fig, axes = plt.subplots(1, len(envs), figsize=(4.4 * len(envs), 3.4), squeeze=False)
    for j, env in enumerate(envs):
        for agent, lr in agents_of(m, env):
            lv, scores = robustness(m, env, agent, lr, kind)
            mean, err = C.mean_and_stderr(scores)
            axes[0, j].errorbar(lv, mean, err, marker="o", ms=3, capsize=2, ls="-" if agent == "dqn" else "--",
                                label=f"{agent.upper()} lr={lr:g}")
        axes[0, j].axhline(1.0, color="0.6", lw=0.8, ls=":")
        axes[0, j].set(title=env, xlabel=title, ylabel="robustness score (R_level / R_0)")
    axes[0, 0].legend()
    fig.suptitle(f"Fig. {number}: evaluation-time {kind} perturbations ({C.seeds_note(m, env=envs[0], agent='dqn')})")
    C.save_figure(fig, out, f"fig{number}_random_{kind}")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    plot_dqn_vs_bc(plt, m, out)
    plot_robustness(plt, m, out, "shift", 21, "random shift (cells or pixels of padding)")
    plot_robustness(plt, m, out, "scale", 22, "random scaling strength s (zoom in [1-s, 1+s])")


STUDY = C.Study("exp_robustness", __doc__.split("\n\n")[0], PRESETS, run, claims, plot)

if __name__ == "__main__":
    C.main(STUDY)

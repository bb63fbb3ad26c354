"""Tandem and forked tandem RL: is data reuse what collapses the rank? (Section 9 of Gulcehre et al.
2022; the setting of Ostrovski et al. 2021, "The difficulty of passive learning in deep RL").

Figures: 17 (tandem double DQN with Adam and RMSProp: return, srank, dead units and dormant fraction
of the active and the passive agent), 18 (forked tandem: srank and return of the passive copy after
the fork, trained with double Q-learning, behaviour value estimation or Monte-Carlo returns).

    make exp_tandem                          # cpu preset: bsuite catch and cartpole, 5 seeds
    python exp_tandem.py --preset paper      # Atari with ALE and the Nature torso (GPU, days)
    python exp_tandem.py --plot-only         # redraw the figures from results/exp_tandem/
    python exp_tandem.py --help              # every setting, with the chosen preset's value

Replay. The online agent's replay lives on the device (common.Replay): fixed-size ring arrays per
seed, written in time order. Episodes enter it when they end, so every stored transition has its
Monte-Carlo return-to-go; in effect sampling is restricted to completed episodes, which delays each
transition by at most the rest of its episode. A minibatch draws only rows whose successor is the
true next state: the last step of a time-limit truncation is never drawn (its next state was not
stored), and the newest row waits until its successor is written. The ``step`` column counts
environment steps per seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import common as C

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """Tandem (active vs passive double DQN, Adam and RMSProp) and forked tandem (DQN, BVE, MC)."""

    env: tuple[str, ...]
    """Environment ids."""
    seeds: int
    """Seeds; each has its own environments, replay and agents."""
    num_env_steps: int
    """Environment steps per seed of a tandem run (the forked run ends at the same step)."""
    num_envs: int
    """Parallel environments per seed."""
    updates_per_step: int
    """Gradient updates per vector step of num_envs transitions (the replay ratio)."""
    replay_capacity: int
    """Transitions per seed in the replay."""
    learning_starts: int
    """Sampleable transitions in a seed's replay before its agents start to update."""
    target_update_period: int
    """Gradient updates between target-network copies."""
    epsilon_decay_steps: int
    """Environment steps over which epsilon anneals linearly from epsilon_start to epsilon_end."""
    log_every: int
    """Environment steps between probe metrics (srank, dead units, dormant fraction, loss)."""
    eval_every: int
    """Environment steps between evaluations (a multiple of log_every)."""
    eval_episodes: int
    """Evaluation episodes per agent and seed."""
    optimizers: tuple[C.Optimizer, ...] = ("adam", "rmsprop")
    """Optimizers of the tandem runs (each is its own compiled program)."""
    adam_lr: float = 3e-4
    """Adam learning rate."""
    rmsprop_lr: float = 3e-4
    """RMSProp learning rate (Dopamine's centred RMSProp, decay 0.95, eps 1e-5)."""
    batch_size: int = 32
    """Minibatch size."""
    gamma: float = 0.99
    """Discount."""
    epsilon_start: float = 1.0
    """Exploration rate at the start."""
    epsilon_end: float = 0.05
    """Exploration rate after the decay (and of the frozen actor after the fork)."""
    eval_epsilon: float = 0.0
    """Exploration rate of the evaluation policy."""
    fork_fraction: float = 0.5
    """Fraction of the run after which the active agent is forked and frozen."""
    fork_optimizer: C.Optimizer = "adam"
    """The tandem run whose active agent is forked."""
    clip_rewards: bool = False
    """Clip rewards to [-1, 1] in the losses (Atari)."""
    probe_size: int = 512
    """States (visited by a uniformly random policy) in the fixed probe batch."""

    checkpoint_seconds: float = 60.0
    """Wall seconds between checkpoints: a killed run resumes from the last one."""

    def check(self) -> None:
        C.require(self.checkpoint_seconds >= 0, "--checkpoint-seconds must be >= 0")
        C.check_env_ids(self.env)
        C.require_positive(self, "seeds", "num_env_steps", "num_envs", "updates_per_step", "replay_capacity",
                           "learning_starts", "target_update_period", "epsilon_decay_steps", "log_every",
                           "eval_every", "eval_episodes", "adam_lr", "rmsprop_lr", "batch_size", "probe_size")
        C.require(self.fork_optimizer in self.optimizers,
                  f"--fork-optimizer {self.fork_optimizer} must be one of --optimizers {self.optimizers}")
        for name in ("num_env_steps", "log_every", "eval_every"):
            C.require_multiple(self, name, "num_envs")
        C.require_multiple(self, "eval_every", "log_every")
        C.require_multiple(self, "num_env_steps", "eval_every")
        C.require(0 < self.fork_fraction < 1 and fork_step(self) % self.eval_every == 0,
                  f"fork_fraction x num_env_steps ({fork_step(self)}) must be a multiple of eval_every "
                  f"({self.eval_every}) inside the run")
        C.require(self.replay_capacity >= C.INSERT_BLOCK_PER_ENV * self.num_envs,
                  f"--replay-capacity must be at least {C.INSERT_BLOCK_PER_ENV * self.num_envs}")


PRESETS = {
    # The paper's bsuite settings (2x64 ReLU MLP, batch 32, Adam 3e-4, discount 0.99); scaled: 1e5
    # env steps per seed instead of 1e6, one update per two env steps (8 envs, 4 updates per vector
    # step), and a 20k replay (a fifth of the run, so after the fork the frozen policy's data
    # replaces the learning phase's, as in DQN's 1M buffer over 50M steps). RMSProp: Dopamine's DQN
    # settings (centred, decay 0.95, eps 1e-5) at the same rate. The paper's 5 seeds. MinAtar does not
    # fit 15 CPU minutes.
    "cpu": Config(env=("bsuite/catch", "bsuite/cartpole"), seeds=5, num_env_steps=100_000, num_envs=8,
                  updates_per_step=4, replay_capacity=20_000, learning_starts=1_000, target_update_period=100,
                  epsilon_decay_steps=10_000, log_every=2_000, eval_every=10_000, eval_episodes=20),
    # The paper's bsuite length: 1e6 env steps per seed, 5 seeds; the replay (a fifth of the run) and
    # the exploration schedule scale with it.
    "long": Config(env=("bsuite/catch", "bsuite/cartpole"), seeds=5, num_env_steps=1_000_000, num_envs=8,
                   updates_per_step=4, replay_capacity=200_000, learning_starts=1_000, target_update_period=100,
                   epsilon_decay_steps=100_000, log_every=20_000, eval_every=100_000, eval_episodes=20),
    # Tandem DQN's Atari protocol (Dopamine DQN: update every 4 agent steps, target every 8k agent
    # steps, 1M replay, 20k warm-up, epsilon 1 -> 0.01 over 250k steps, 200M frames; RMSProp 2.5e-4,
    # Adam 6.25e-5), batch 32 and discount 0.99 as in the paper. Fig. 17's game list is not in the
    # text we have; these are five standard games. A 1M replay of stacked frames is 28 GB per seed
    # on the device (and once more in host memory at the fork): 2 seeds on an 80 GB GPU.
    "paper": Config(env=tuple(f"atari/{g}" for g in ("Asterix", "Breakout", "Pong", "Qbert", "Seaquest")), seeds=2,
                    num_env_steps=50_000_000, num_envs=8, updates_per_step=2, replay_capacity=1_000_000,
                    learning_starts=20_000, target_update_period=2_000, epsilon_decay_steps=250_000,
                    log_every=200_000, eval_every=1_000_000, eval_episodes=10, adam_lr=6.25e-5, rmsprop_lr=2.5e-4,
                    epsilon_end=0.01, eval_epsilon=0.001, clip_rewards=True),
    "smoke": Config(env=("bsuite/catch",), seeds=2, num_env_steps=1_600, num_envs=4, updates_per_step=2,
                    replay_capacity=2_000, learning_starts=200, target_update_period=50, epsilon_decay_steps=800,
                    log_every=200, eval_every=800, eval_episodes=3, probe_size=128),
}

TANDEM_ROLES = ("active", "passive")
FORKED = ("forked_dqn", "forked_bve", "forked_mc")


def fork_step(cfg: Config) -> int:
    return int(round(cfg.fork_fraction * cfg.num_env_steps))


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> dict:
    """Per environment and optimizer, one tandem program: per seed, an active double-DQN agent acts
    epsilon-greedily in ``num_envs`` environments and learns from its own replay; a passive agent of
    the same architecture, initialised from its own key, takes the identical minibatches in the
    identical order with the identical loss and optimizer, and never acts. For ``fork_optimizer``
    the forked program follows: at ``fork_fraction`` of the run the active agent (parameters,
    target, optimizer state) and its replay are copied; the active copy is frozen and keeps acting
    with the final epsilon; three passive copies learn from that stream with double Q-learning,
    BVE and Monte-Carlo regression. Every ``log_every`` steps the probe metrics on 512 states
    visited by a random policy; every ``eval_every`` steps each agent's own evaluation return."""
    from tqdm.auto import tqdm

    total = len(cfg.env) * (len(cfg.optimizers) * cfg.num_env_steps + cfg.num_env_steps - fork_step(cfg))
    bar = tqdm(total=total, unit="env step", dynamic_ncols=True, desc="tandem")
    rows = []
    for env_id in cfg.env:
        probe = random_policy_states(env_id, cfg.probe_size)
        envs = C.make_env(env_id, 1, 0)
        net = C.default_network(env_id, envs.num_actions, activation="relu")
        envs.close()
        td = C.DoubleDQN(gamma=cfg.gamma, clip_rewards=cfg.clip_rewards)
        for optimizer in cfg.optimizers:
            learning_rate = {"adam": cfg.adam_lr, "rmsprop": cfg.rmsprop_lr}[optimizer]
            forks = optimizer == cfg.fork_optimizer
            tandem = Program(cfg, env_id, net, optimizer, probe, study="tandem", roles=TANDEM_ROLES,
                             losses=(td, td), acting=0, start=0, env_seed=0)
            done = tandem.run(init_tandem(net, cfg, optimizer, learning_rate, probe), out, timings, bar,
                              lambda t: epsilon_at(cfg, t), keep_at=fork_step(cfg) if forks else None)
            rows += done.rows
            if forks:
                forked = Program(cfg, env_id, net, optimizer, probe, study="forked", roles=FORKED,
                                 losses=(td, C.BVE(gamma=cfg.gamma, clip_rewards=cfg.clip_rewards), C.MonteCarlo()),
                                 acting=None, start=fork_step(cfg), env_seed=C.FORK_ENV_SEED, parent=done.identity)
                rows += forked.run(init_forked(done.kept, cfg), out, timings, bar, lambda t: cfg.epsilon_end).rows
            C.write_metrics(out, rows)  # a partial table after each program, for a look while it runs
    bar.close()
    C.write_metrics(out, rows)
    return {"fork_step": fork_step(cfg), "probe": f"{cfg.probe_size} states visited by a uniformly random policy"}


def init_tandem(net, cfg: Config, optimizer: str, learning_rate: float, probe: np.ndarray) -> C.OnlineState:
    """Seed s: key(s) splits into the active agent's key, the passive agent's and the run's
    sampling/acting key; both optimizers start from the same weights for a given seed."""
    keys = [jax.random.split(jax.random.key(s), 3) for s in range(cfg.seeds)]
    sample = jnp.asarray(probe[:1])
    learners = tuple(C.init_learners(net, sample, [k[i] for k in keys], [learning_rate] * cfg.seeds, optimizer)
                     for i in range(len(TANDEM_ROLES)))
    replay = C.Replay.empty(cfg.replay_capacity, probe.shape[1:], probe.dtype, cfg.seeds)
    return C.OnlineState(learners, None, replay, jnp.stack([k[2] for k in keys]))


def init_forked(snapshot: C.OnlineState, cfg: Config) -> C.OnlineState:
    """Three passive copies of the active agent at the fork (parameters, target and optimizer
    state), its frozen parameters as the actor, and its replay as it was. ``snapshot`` is the
    tandem program's state at the fork on the host (``C.to_host``: keys as key data)."""
    device = lambda tree: jax.tree_util.tree_map(jnp.array, tree)  # a fresh buffer per copy (they are donated)
    copy = lambda: device(snapshot.learners[0])._replace(key=jax.random.wrap_key_data(snapshot.learners[0].key))
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 1))(jnp.arange(cfg.seeds))
    return C.OnlineState(tuple(copy() for _ in FORKED), device(snapshot.learners[0].params), device(snapshot.replay),
                         keys)


def epsilon_at(cfg: Config, env_step: int) -> float:
    frac = min(1.0, env_step / max(1, cfg.epsilon_decay_steps))
    return cfg.epsilon_start + frac * (cfg.epsilon_end - cfg.epsilon_start)


# ------------------------------------------------------------------------------------------------
# The study's own pieces: a program of learners with roles, and the probe batch
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled online program: its learners (``roles``, each with its loss), which of them
    acts (``acting``; None: a frozen actor), and the span of environment steps it runs."""

    cfg: Config
    env_id: str
    net: object
    optimizer: str
    probe: np.ndarray
    study: str
    roles: tuple[str, ...]
    losses: tuple[C.Loss, ...]
    acting: int | None
    start: int
    env_seed: int
    parent: str = ""  # the identity of the program whose state this one starts from

    def step_fn(self) -> Callable:
        cfg = self.cfg
        return C.make_online_step(self.net, self.optimizer, self.losses, acting=self.acting,
                                  batch_size=cfg.batch_size, updates_per_step=cfg.updates_per_step,
                                  learning_starts=cfg.learning_starts, target_update_period=cfg.target_update_period)

    def online(self) -> C.OnlineProgram:
        cfg = self.cfg
        return C.OnlineProgram(self.env_id, cfg.seeds, cfg.num_envs, self.env_seed, self.start, cfg.num_env_steps,
                               cfg.log_every, C.INSERT_BLOCK_PER_ENV * cfg.num_envs, cfg.gamma)

    def columns(self) -> list[dict]:
        """Learner-major, as the stacked parameters of ``stacked_params``."""
        return [{"study": self.study, "env": self.env_id, "agent": role, "optimizer": self.optimizer, "seed": s}
                for role in self.roles for s in range(self.cfg.seeds)]

    def identity(self, state: C.OnlineState) -> str:
        """Everything that decides this program's numbers: the traced step (network, losses,
        optimizer, schedule constants), the config, the probe, the initial state's origin."""
        queue = C.EpisodeQueue(self.cfg.seeds, self.cfg.num_envs, C.INSERT_BLOCK_PER_ENV * self.cfg.num_envs,
                               self.probe.shape[1:], self.probe.dtype, self.cfg.gamma)
        block = queue.take()
        obs = np.zeros((self.cfg.seeds, self.cfg.num_envs, *self.probe.shape[1:]), self.probe.dtype)
        step = str(self.step_fn().trace(state, *block, obs, 0.0, True).jaxpr)
        config = C.jsonable(dataclasses.replace(self.cfg, checkpoint_seconds=0.0))  # when to save changes no number
        return C.run_identity(step=step, config=config, program=C.jsonable(self.online()),
                              columns=self.columns(), probe=C.digest(self.probe), parent=self.parent)

    def run(self, state: C.OnlineState, out: Path, timings: C.Timings, bar, epsilon: Callable[[int], float],
            keep_at: int | None = None) -> "ProgramResult":
        cfg = self.cfg
        identity = self.identity(state)
        recorder = C.Recorder(out / "checkpoints" / f"{self.study}_{C.short_env(self.env_id)}_{self.optimizer}_"
                              f"{identity}", {"program": C.jsonable(self.online()), "roles": self.roles},
                              self.columns(), cfg.checkpoint_seconds)
        probe_fn = C.make_probe_fn(self.net)
        evaluate = C.Evaluator(self.env_id, cfg.eval_episodes, epsilon=cfg.eval_epsilon)
        probe = jnp.asarray(self.probe)

        def log(step: int, state: C.OnlineState, mean_loss: np.ndarray | None) -> None:
            params = stacked_params(state.learners)
            with timings("probe"):
                for name, v in probe_fn(params, probe).items():
                    if name != "units" or step == self.start:  # the layer's width, once
                        recorder.record(step, name, v)
            if mean_loss is not None:
                recorder.record(step, "loss", mean_loss.T)  # (seeds, learners) -> learner-major
            if step % cfg.eval_every == 0:
                with timings("evaluate"):
                    returns = evaluate(self.net, params)["return"]
                recorder.record(step, "return", returns)
                bar.set_postfix({r: f"{v:.3g}" for r, v in zip(self.roles, returns.reshape(len(self.roles), -1).mean(1))},
                                refresh=False)

        bar.set_description(f"{self.env_id} {self.optimizer} {self.study}")
        state, kept = C.run_online(self.online(), self.step_fn(), state, recorder, epsilon=epsilon, log=log,
                                   keep_at=keep_at, progress=bar.update, timings=timings)
        return ProgramResult(recorder.finish(), kept, identity)


class ProgramResult(NamedTuple):
    rows: list[dict]
    kept: C.OnlineState | None  # the host copy of the state at ``keep_at`` (the fork)
    identity: str


def stacked_params(learners: tuple[C.TrainState, ...]):
    """(learners x seeds, ...) parameters, learner-major, for the probe and the evaluation."""
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *(learner.params for learner in learners))


def random_policy_states(env_id: str, size: int, seed: int = C.RANDOM_PROBE_SEED) -> np.ndarray:
    """The probe batch: ``size`` distinct visits of a uniformly random policy (8 envs, 4 x size steps),
    picked at random."""
    env = C.make_env(env_id, 8, seed)
    rng = np.random.default_rng(seed)
    obs = [env.reset()]
    for _ in range(max(1, 4 * size // env.num_envs)):
        obs.append(env.step(rng.integers(env.num_actions, size=env.num_envs))[0])
    env.close()
    visited = np.concatenate(obs)
    return visited[rng.choice(len(visited), size=min(size, len(visited)), replace=False)]


# ------------------------------------------------------------------------------------------------
# Analysis and claims, from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def forked_start(m: C.Metrics, env: str) -> int:
    return int(m.steps(env=env, agent="forked_dqn").min())


def at_fork_and_final(m: C.Metrics, env: str, agent: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, the forked agent's value at the fork and its final value."""
    opt = m.values("optimizer", env=env, agent=agent)[0]
    where = {"env": env, "agent": agent, "optimizer": opt}
    return m.at_step(forked_start(m, env), metric=metric, **where), C.final_values(m, metric, **where)


def active_minus_passive(m: C.Metrics, metric: str) -> list[C.Evidence]:
    evidence = []
    for env in m.values("env", agent="active"):
        for opt in m.values("optimizer", env=env, agent="active"):
            gap = C.final_values(m, metric, env=env, agent="active", optimizer=opt) - \
                C.final_values(m, metric, env=env, agent="passive", optimizer=opt)
            label = f"{env} ({opt})"
            if metric == "return" and np.all(gap == 0):
                evidence.append(C.Evidence(label, "not testable here", note="both agents returned the same in every "
                                           "seed (both solved the task)"))
            else:
                evidence.append(C.directional(label, gap, "greater"))
    return evidence


def claim_passive_return(m: C.Metrics) -> C.Claim:
    return C.Claim(
        "tandem.passive_return", "The passive agent's performance tends to be significantly (in most cases, "
        "catastrophically) worse than the active agent's (Section 9, Fig. 17).", "per seed, final return of the "
        "active agent minus the passive agent's, per environment and optimizer", "held if > 0 (one-sided sign-flip "
        "test, p < 0.05); not held if < 0", tuple(active_minus_passive(m, "return")))


def claim_passive_rank(m: C.Metrics) -> C.Claim:
    return C.Claim(
        "tandem.passive_rank", "Despite reusing data as the active agent does, the passive agent collapses to a "
        "lower rank (Section 9, Fig. 17).", "per seed, final srank of the active agent minus the passive agent's, "
        "per environment and optimizer", "held if > 0 (one-sided sign-flip test, p < 0.05); not held if < 0",
        tuple(active_minus_passive(m, "srank")))


def claim_optimizers(m: C.Metrics, metric: str) -> C.Claim:
    evidence = []
    for env in m.values("env", agent="active"):
        if not {"adam", "rmsprop"} <= set(m.values("optimizer", env=env, agent="active")):
            evidence.append(C.Evidence(env, "not testable here", note="Adam and RMSProp were not both run"))
            continue
        final = {o: C.final_values(m, metric, env=env, agent="active", optimizer=o) for o in ("adam", "rmsprop")}
        gap = final["rmsprop"] - final["adam"] if metric == "srank" else final["adam"] - final["rmsprop"]
        if metric == "return" and np.all(gap == 0):
            evidence.append(C.Evidence(env, "not testable here", note="both optimizers returned the same"))
            continue
        evidence.append(C.directional(env, gap, "greater"))
    if metric == "srank":
        return C.Claim(
            "tandem.adam_rank", "The rank of the model trained with Adam tends to be lower than with RMSProp "
            "(Section 9, Fig. 17).", "per seed, the active agent's final srank with RMSProp minus with Adam (the "
            "same seed: the same initial weights)", "held if > 0 (one-sided sign-flip test, p < 0.05); not held if "
            "< 0", tuple(evidence))
    return C.Claim(
        "tandem.adam_return", "Adam achieves better performance than RMSProp (Section 9, Fig. 17).", "per seed, the "
        "active agent's final return with Adam minus with RMSProp", "held if > 0 (one-sided sign-flip test, "
        "p < 0.05); not held if < 0", tuple(evidence))


def claim_forked_return(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", agent="forked_dqn"):
        drop = {}
        for agent in FORKED:
            at_fork, end = at_fork_and_final(m, env, agent, "return")
            drop[agent] = at_fork - end
        if all(np.all(d == 0) for d in drop.values()):  # e.g. catch, solved before the fork and after
            evidence.append(C.Evidence(env, "not testable here", note="no agent's return changed after the fork"))
            continue
        # Two things at once: Q-learning's return falls, and BVE's and MC's fall less (both, so the larger
        # loss). The second alone would hold when every return rose after the fork.
        evidence.append(C.every_part(env, {
            "Q-learning's falls": C.directional(env, drop["forked_dqn"], "greater"),
            "BVE's and MC's fall less": C.directional(
                env, drop["forked_dqn"] - np.maximum(drop["forked_bve"], drop["forked_mc"]), "greater")}))
    return C.Claim(
        "tandem.forked_return", "After the fork, the performance of the passive Q-learning agent collapses; the "
        "declines of BVE and of Monte-Carlo regression are not as bad (Section 9, Fig. 18).", "per seed, the return "
        "lost after the fork (at the fork minus final): (1) double Q-learning's; (2) that minus the larger of BVE's "
        "and MC's", "held if both > 0 (one-sided sign-flip tests, p < 0.05); not held if either < 0 by the same "
        "test; the value shown is the deciding part's", tuple(evidence))


def claim_forked_rank(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", agent="forked_dqn"):
        rise = {}
        for agent in FORKED:
            at_fork, end = at_fork_and_final(m, env, agent, "srank")
            rise[agent] = end - at_fork
        # Two things at once: BVE's and MC's ranks go up (both, so the smaller rise), and Q-learning's
        # does not go up with them. The second alone would hold when all three fall.
        others = np.minimum(rise["forked_bve"], rise["forked_mc"])
        evidence.append(C.every_part(env, {
            "BVE and MC rise": C.directional(env, others, "greater"),
            "Q-learning rises less": C.directional(env, others - rise["forked_dqn"], "greater")}))
    return C.Claim(
        "tandem.forked_rank", "After the fork the Q-learning agent's rank flat-lines, while the ranks of BVE and "
        "of Monte-Carlo regression go up (Section 9, Fig. 18).", "per seed, the srank change after the fork "
        "(final minus at the fork): (1) the smaller of BVE's and MC's; (2) that minus double Q-learning's",
        "held if both > 0 (one-sided sign-flip tests, p < 0.05); not held if either < 0 by the same test; the value "
        "shown is the deciding part's", tuple(evidence))


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    out = [claim_passive_return(m), claim_passive_rank(m), claim_optimizers(m, "srank"), claim_optimizers(m, "return")]
    if m.has(agent="forked_dqn"):
        out += [claim_forked_return(m), claim_forked_rank(m)]
    return out


# ------------------------------------------------------------------------------------------------
# Figures: one function per figure
# ------------------------------------------------------------------------------------------------

OPT_COLORS = {"adam": "tab:blue", "rmsprop": "tab:orange"}
AGENT_STYLES = {"active": "-", "passive": "--"}
FORKED_COLORS = {"forked_bve": "tab:green", "forked_mc": "tab:purple", "forked_dqn": "tab:red"}  # DQN on top
FORKED_LABELS = {"forked_dqn": "passive: double Q-learning", "forked_bve": "passive: BVE (SARSA)",
                 "forked_mc": "passive: Monte-Carlo return"}
PANELS = {"return": "evaluation return", "srank": "srank (512 probe states)", "dead_units": "dead units",
          "dormant_frac": "dormant fraction (tau = 0.025)"}


def plot_tandem(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 17: tandem, active (solid) vs passive (dashed), per optimizer."""
    envs = m.values("env")
    fig, axes = plt.subplots(len(envs), len(PANELS), figsize=(3.6 * len(PANELS), 2.9 * len(envs) + 0.4),
                             squeeze=False, layout="constrained")
    for i, env in enumerate(envs):
        for opt in m.values("optimizer", env=env, agent="active"):
            for agent, style in AGENT_STYLES.items():
                for j, metric in enumerate(PANELS):
                    C.plot_band(axes[i, j], *m.curves(env=env, agent=agent, optimizer=opt, metric=metric),
                                f"{agent}, {opt}", OPT_COLORS.get(opt), ls=style)
        for j, (metric, label) in enumerate(PANELS.items()):
            axes[i, j].set(title=f"{env}: {metric}", ylabel=label)
            axes[-1, j].set(xlabel="environment steps per seed")
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 17: tandem double DQN, active agent acts and learns, passive agent learns from the same "
                 f"batches ({C.seeds_note(m, env=envs[0], agent='active')})")
    C.save_figure(fig, out, "fig17_tandem")


def plot_forked(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 18: forked tandem, the passive copy after the fork per loss."""
    envs = [e for e in m.values("env") if m.has(env=e, agent="forked_dqn")]
    fig, axes = plt.subplots(len(envs), 2, figsize=(10, 3.0 * len(envs) + 0.4), squeeze=False, layout="constrained")
    for i, env in enumerate(envs):
        opt = m.values("optimizer", env=env, agent="forked_dqn")[0]
        start = forked_start(m, env)
        for j, metric in enumerate(("return", "srank")):
            ax = axes[i, j]
            steps, grid = m.curves(env=env, agent="active", optimizer=opt, metric=metric)
            C.plot_band(ax, steps[steps <= start], grid[:, steps <= start], "active, before the fork", "black")
            C.plot_band(ax, steps[steps >= start], grid[:, steps >= start], "active, unforked (tandem run)", "0.6",
                        ls=":")
            for agent, color in FORKED_COLORS.items():
                C.plot_band(ax, *m.curves(env=env, agent=agent, optimizer=opt, metric=metric), FORKED_LABELS[agent],
                            color)
            ax.axvline(start, color="0.3", lw=0.8, ls="--")
            ax.set(title=f"{env}: {metric} ({opt})", ylabel=PANELS[metric])
        axes[-1, 0].set(xlabel="environment steps per seed")
        axes[-1, 1].set(xlabel="environment steps per seed")
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 18: forked tandem, the active copy frozen at the dashed line keeps acting "
                 f"({C.seeds_note(m, env=envs[0], agent='active')})")
    C.save_figure(fig, out, "fig18_forked_tandem")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    plot_tandem(plt, m, out)
    if m.has(agent="forked_dqn"):
        plot_forked(plt, m, out)


STUDY = C.Study("exp_tandem", __doc__.split("\n\n")[0], PRESETS, run, claims, plot)

if __name__ == "__main__":
    C.main(STUDY)

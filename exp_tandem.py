"""Tandem and forked tandem RL: is data reuse what collapses the rank? (Section 9 of Gulcehre et al.
2022; the setting of Ostrovski et al. 2021, "The difficulty of passive learning in deep RL").

Figures: 17 (tandem double DQN with Adam and RMSProp: return, srank, dead units and dormant fraction
of the active and the passive agent), 18 (forked tandem: srank and return of the passive copy after
the fork, trained with double Q-learning, behaviour value estimation or Monte-Carlo returns).

    make exp_tandem                          # cpu preset: bsuite catch and cartpole, 2 seeds
    python exp_tandem.py --preset paper      # Atari with ALE and the Nature torso (GPU, days)
    python exp_tandem.py --plot-only         # redraw the figures from results/exp_tandem/

Protocol. Tandem: per seed, an active double-DQN agent acts epsilon-greedily in ``num_envs``
parallel environments and learns online from its own replay; a passive agent of the same
architecture, initialised from its own key, takes the identical minibatches in the identical
order with the identical loss and optimizer, and never acts. Both agents' updates, the replay
insertion and the active agent's next actions are one jitted step, vmapped over seeds; Adam and
RMSProp are separate programs (their states differ in structure). Forked tandem: the active agent
of the ``fork_optimizer`` tandem run is copied at ``fork_fraction`` of the run (parameters, target
and optimizer state, replay buffer); the active copy is frozen and keeps generating data with its
final epsilon; three passive copies train on that stream, one per loss, again in one jitted step.

Replay. On the device: fixed-size ring arrays and an insert index per seed; minibatch rows are drawn
on device. Episodes enter the buffer whole, when they end, so every stored transition already has
its Monte-Carlo return-to-go (computed at the episode's end) and its successor (the next row) when
it can be sampled; in effect sampling is restricted to completed episodes, for every loss, which
delays each transition by at most the rest of its episode. A time-limit truncation is stored as a
termination (no bootstrap). The probe batch for srank, dead units and the dormant fraction is 512
states visited by a uniformly random policy at the start (the same for every agent, optimizer and
seed). The ``step`` column counts environment steps per seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import common as C

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    env: tuple[str, ...]
    seeds: int
    num_env_steps: int  # environment steps per seed of one tandem run; the forked run ends there too
    num_envs: int  # parallel environments per seed
    updates_per_step: int  # gradient updates per vector step (num_envs transitions per seed)
    replay_capacity: int  # transitions per seed
    learning_starts: int  # transitions in a seed's replay before its agents start to update
    target_update_period: int  # gradient updates between target-network copies
    epsilon_decay_steps: int  # env steps over which epsilon anneals linearly
    log_every: int  # env steps between probe metrics (srank, dead units, dormant fraction, loss)
    eval_every: int  # env steps between evaluations
    eval_episodes: int
    optimizers: tuple[str, ...] = ("adam", "rmsprop")
    adam_lr: float = 3e-4
    rmsprop_lr: float = 3e-4
    batch_size: int = 32
    gamma: float = 0.99
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    eval_epsilon: float = 0.0
    fork_fraction: float = 0.5
    fork_optimizer: str = "adam"
    clip_rewards: bool = False
    probe_size: int = 512
    dormant_tau: float = 0.025


PRESETS = {
    # The paper's bsuite settings (2x64 ReLU MLP, batch 32, Adam 3e-4, discount 0.99); scaled: 1e5
    # env steps per seed instead of 1e6, one update per two env steps (8 envs, 4 updates per vector
    # step), and a 20k replay (a fifth of the run, so after the fork the frozen policy's data
    # replaces the learning phase's, as in DQN's 1M buffer over 50M steps). RMSProp: Dopamine's DQN
    # settings (centred, decay 0.95, eps 1e-5) at the same rate. MinAtar does not fit 15 CPU minutes.
    "cpu": Config(env=("bsuite/catch", "bsuite/cartpole"), seeds=2, num_env_steps=100_000, num_envs=8,
                  updates_per_step=4, replay_capacity=20_000, learning_starts=1_000, target_update_period=100,
                  epsilon_decay_steps=10_000, log_every=2_000, eval_every=10_000, eval_episodes=20),
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


@dataclasses.dataclass(frozen=True)
class Args(C.StudyArgs):
    """Tandem (active vs passive double DQN, Adam and RMSProp) and forked tandem (DQN, BVE, MC)."""

    num_env_steps: int | None = None
    """Environment steps per seed of a tandem run (the forked run ends at the same step)."""
    num_envs: int | None = None
    """Parallel environments per seed."""
    updates_per_step: int | None = None
    """Gradient updates per vector step of num_envs transitions (the replay ratio)."""
    optimizers: tuple[Literal["adam", "rmsprop"], ...] | None = None
    """Optimizers of the tandem runs (each is its own compiled program)."""
    fork_fraction: float | None = None
    """Fraction of the run after which the active agent is forked and frozen."""
    eval_every: int | None = None
    """Environment steps between evaluations (a multiple of log_every)."""


TANDEM_AGENTS = ("active", "passive")
FORKED_LOSSES = {"forked_dqn": "double_dqn", "forked_bve": "bve", "forked_mc": "mc"}
INSERT_BLOCK_PER_ENV = 8  # transitions a seed may move into its replay per vector step, per env


def fork_step(cfg: Config) -> int:
    return int(round(cfg.fork_fraction * cfg.num_env_steps))


def check_config(cfg: Config) -> None:
    C.check_env_ids(cfg.env)
    if cfg.fork_optimizer not in cfg.optimizers:
        raise ValueError(f"fork_optimizer {cfg.fork_optimizer!r} must be one of the optimizers {cfg.optimizers}")
    for name in ("num_env_steps", "log_every", "eval_every"):
        if getattr(cfg, name) % cfg.num_envs:
            raise ValueError(f"{name} ({getattr(cfg, name)}) must be a multiple of num_envs ({cfg.num_envs})")
    if cfg.eval_every % cfg.log_every or cfg.num_env_steps % cfg.eval_every:
        raise ValueError(f"eval_every ({cfg.eval_every}) must be a multiple of log_every ({cfg.log_every}) and "
                         f"divide num_env_steps ({cfg.num_env_steps})")
    if not 0 < cfg.fork_fraction < 1 or fork_step(cfg) % cfg.eval_every:
        raise ValueError(f"fork_fraction x num_env_steps ({fork_step(cfg)}) must be a multiple of eval_every "
                         f"({cfg.eval_every}) inside the run")
    if cfg.replay_capacity < INSERT_BLOCK_PER_ENV * cfg.num_envs:
        raise ValueError(f"replay_capacity must be at least {INSERT_BLOCK_PER_ENV * cfg.num_envs}")


# ------------------------------------------------------------------------------------------------
# The experiment's own pieces: the replay ring, the episode queue, the joint step
# ------------------------------------------------------------------------------------------------


class Transitions(NamedTuple):
    obs: Any  # (n, *obs_shape)
    action: Any  # (n,) int32
    reward: Any  # (n,) float32
    discount: Any  # (n,) float32, 0 at the last step of an episode
    mc_return: Any  # (n,) float32, discounted return from this step to the episode's end


class Replay(NamedTuple):
    """One seed's replay on the device: ring arrays of transitions and an insert index. Whole
    episodes are written in order, so the successor of row i is row i + 1 (mod capacity) unless row i
    ends its episode (discount 0, successor unused)."""

    data: Transitions
    ptr: jax.Array  # next row to write
    size: jax.Array  # rows written so far, at most the capacity

    def insert(self, block: Transitions, count: jax.Array) -> "Replay":
        """Writes the first ``count`` rows of ``block`` at the insert index (the rest are dropped)."""
        capacity = self.data.action.shape[0]
        i = jnp.arange(block.action.shape[0])
        rows = jnp.where(i < count, (self.ptr + i) % capacity, capacity)  # out of range: not written
        data = jax.tree_util.tree_map(lambda buf, new: buf.at[rows].set(new, mode="drop"), self.data, block)
        return Replay(data, (self.ptr + count) % capacity, jnp.minimum(self.size + count, capacity))

    def batch(self, rows: jax.Array) -> C.Batch:
        following = (rows + 1) % self.data.action.shape[0]
        d = self.data
        return C.Batch(obs=d.obs[rows], action=d.action[rows], reward=d.reward[rows], discount=d.discount[rows],
                       next_obs=d.obs[following], next_action=d.action[following], mc_return=d.mc_return[rows])


def empty_replay(seeds: int, capacity: int, obs_shape, obs_dtype) -> Replay:
    zeros = lambda *shape, dtype=jnp.float32: jnp.zeros((seeds, capacity, *shape), dtype)
    data = Transitions(zeros(*obs_shape, dtype=obs_dtype), zeros(dtype=jnp.int32), zeros(), zeros(), zeros())
    return Replay(data, jnp.zeros(seeds, jnp.int32), jnp.zeros(seeds, jnp.int32))


class EpisodeQueue:
    """Host side of the replay: each environment's running episode and each seed's finished
    transitions waiting to enter its device buffer, ``block`` rows per vector step at most.

    An episode is queued when it ends, with its discounted return-to-go (``common.returns_to_go``);
    a truncated episode is queued like a terminated one."""

    def __init__(self, seeds: int, num_envs: int, block: int, obs_shape, obs_dtype, gamma: float):
        self.block, self.gamma = block, gamma
        self.running = [[[] for _ in range(num_envs)] for _ in range(seeds)]
        self.waiting: list[list[Transitions]] = [[] for _ in range(seeds)]
        self.empty = Transitions(np.zeros((0, *obs_shape), obs_dtype), np.zeros(0, np.int32),
                                 *(np.zeros(0, np.float32) for _ in range(3)))

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, done: np.ndarray) -> None:
        """One vector step: arrays of shape (seeds, num_envs, ...)."""
        for s, episodes in enumerate(self.running):
            for e, episode in enumerate(episodes):
                episode.append((obs[s, e], action[s, e], reward[s, e]))
                if done[s, e]:
                    self.waiting[s].append(self._finish(episode))
                    episodes[e] = []

    def _finish(self, steps: list) -> Transitions:
        obs, action, reward = zip(*steps)
        reward = np.asarray(reward, np.float32)
        terminal = np.zeros(len(steps), np.float32)
        terminal[-1] = 1.0
        return Transitions(np.stack(obs), np.asarray(action, np.int32), reward, 1.0 - terminal,
                           C.returns_to_go(reward, terminal, self.gamma))

    def take(self) -> tuple[Transitions, np.ndarray]:
        """Up to ``block`` waiting rows per seed, padded to ``block``: (Transitions (seeds, block, ...),
        counts (seeds,))."""
        heads, counts = [], []
        for s, waiting in enumerate(self.waiting):
            queued = Transitions(*(np.concatenate(f) for f in zip(*waiting))) if waiting else self.empty
            head = Transitions(*(f[:self.block] for f in queued))
            rest = Transitions(*(f[self.block:] for f in queued))
            self.waiting[s] = [rest] if len(rest.action) else []
            counts.append(len(head.action))
            pad = self.block - len(head.action)
            heads.append(Transitions(*(np.concatenate([f, np.zeros((pad, *f.shape[1:]), f.dtype)]) for f in head)))
        return Transitions(*(np.stack(f) for f in zip(*heads))), np.asarray(counts, np.int32)


class RunState(NamedTuple):
    """Everything one seed's program carries from step to step (stacked over seeds)."""

    learners: tuple[C.TrainState, ...]  # tandem: (active, passive); forked: one per loss
    actor: Any  # frozen acting parameters (forked), or None: learners[0] acts (tandem)
    replay: Replay
    key: jax.Array


def new_learner(net, optimizer: str, learning_rate: float, key: jax.Array, sample_obs) -> C.TrainState:
    params = net.init(key, sample_obs)
    opt_state = C.make_optimizer(optimizer, learning_rate).init(params)
    return C.TrainState(params, params, opt_state, None, jnp.zeros((), jnp.int32))


def init_tandem(net, cfg: Config, optimizer: str, obs_shape, obs_dtype) -> RunState:
    """Seed s: key(s) splits into the active agent's init key, the passive agent's and the run's
    sampling/acting key; both optimizers start from the same weights for a given seed."""
    sample_obs = jnp.zeros((1, *obs_shape), obs_dtype)
    learning_rate = {"adam": cfg.adam_lr, "rmsprop": cfg.rmsprop_lr}[optimizer]

    def init_seed(seed):
        active_key, passive_key, run_key = jax.random.split(jax.random.key(seed), 3)
        learners = tuple(new_learner(net, optimizer, learning_rate, k, sample_obs) for k in (active_key, passive_key))
        return learners, run_key

    learners, keys = jax.jit(jax.vmap(init_seed))(jnp.arange(cfg.seeds))
    return RunState(learners, None, empty_replay(cfg.seeds, cfg.replay_capacity, obs_shape, obs_dtype), keys)


def init_forked(snapshot: tuple[C.TrainState, Replay], cfg: Config) -> RunState:
    """Three passive copies of the active agent at the fork (parameters, target and optimizer state),
    its frozen parameters as the actor, and its replay buffer as it was."""
    active, replay = snapshot
    copies = tuple(jax.device_put(active) for _ in FORKED_LOSSES)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 1))(jnp.arange(cfg.seeds))
    return RunState(copies, jax.device_put(active.params), jax.device_put(replay), keys)


def epsilon_greedy(key: jax.Array, q: jax.Array, epsilon: jax.Array) -> jax.Array:
    explore_key, action_key = jax.random.split(key)
    random_action = jax.random.randint(action_key, q.shape[:1], 0, q.shape[-1])
    return jnp.where(jax.random.uniform(explore_key, q.shape[:1]) < epsilon, random_action, jnp.argmax(q, axis=-1))


def epsilon_at(cfg: Config, env_step: int) -> float:
    frac = min(1.0, env_step / max(1, cfg.epsilon_decay_steps))
    return cfg.epsilon_start + frac * (cfg.epsilon_end - cfg.epsilon_start)


def make_step(net, cfg: Config, optimizer: str, losses: tuple[str, ...]) -> Callable:
    """The one jitted step, vmapped over seeds:
    ``(state, block, count, obs, epsilon) -> (state, actions, mean loss per learner)``.

    Per seed: move ``count`` finished transitions into the replay; draw ``updates_per_step`` x
    ``batch_size`` rows on device; give every learner the same minibatches in the same order, each
    with its own loss (``losses[k]`` for learner k) and its own optimizer state; then act
    epsilon-greedily on ``obs`` with the actor (the updated first learner, or the frozen actor).
    Learners update only once their seed's replay holds ``learning_starts`` transitions."""
    opt = C.make_optimizer(optimizer)

    def seed_step(state: RunState, block: Transitions, count, obs, epsilon):
        replay = state.replay.insert(block, count)
        key, sample_key, act_key = jax.random.split(state.key, 3)
        rows = jax.random.randint(sample_key, (cfg.updates_per_step, cfg.batch_size), 0, jnp.maximum(replay.size, 1))

        def update(learners, rows):
            batch = replay.batch(rows)
            stepped = [C.learner_step(net, opt, learner, batch, loss=kind, gamma=cfg.gamma,
                                      target_update_period=cfg.target_update_period, clip_rewards=cfg.clip_rewards)
                       for learner, kind in zip(learners, losses)]
            return tuple(s[0] for s in stepped), jnp.stack([s[1] for s in stepped])

        updated, loss = jax.lax.scan(update, state.learners, rows)
        ready = replay.size >= cfg.learning_starts
        learners = jax.tree_util.tree_map(lambda new, old: jnp.where(ready, new, old), updated, state.learners)
        actor = learners[0].params if state.actor is None else state.actor
        actions = epsilon_greedy(act_key, net.apply(actor, obs)[0], epsilon)
        return RunState(learners, state.actor, replay, key), actions, jnp.where(ready, jnp.mean(loss, axis=0), jnp.nan)

    return jax.jit(jax.vmap(seed_step, in_axes=(0, 0, 0, 0, None)), donate_argnums=0)


class SeedEnvs:
    """``num_envs`` environments per seed (seed s's environments are seeded by ``base + s`` alone),
    stepped together; arrays are (seeds, num_envs, ...)."""

    def __init__(self, env_id: str, seeds: int, num_envs: int, base: int):
        self.envs = [C.make_env(env_id, num_envs, base + s) for s in range(seeds)]
        self.num_actions, self.obs_shape, self.obs_dtype = (self.envs[0].num_actions, self.envs[0].obs_shape,
                                                           self.envs[0].obs_dtype)

    def reset(self) -> np.ndarray:
        return np.stack([env.reset() for env in self.envs])

    def step(self, actions: np.ndarray):
        return tuple(np.stack(x) for x in zip(*(env.step(a) for env, a in zip(self.envs, actions))))

    def close(self) -> None:
        for env in self.envs:
            env.close()


def random_policy_states(env_id: str, size: int, seed: int = 12_345) -> np.ndarray:
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


def stacked_params(learners: tuple[C.TrainState, ...]):
    """(learners x seeds, ...) parameters, learner-major, for the probe and the evaluation."""
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *(l.params for l in learners))


@dataclasses.dataclass
class Program:
    """One compiled program's run: which agents it trains, from which step to which."""

    env_id: str
    config: str  # e.g. "opt=adam"
    agents: tuple[str, ...]
    start: int
    stop: int
    env_seed_base: int
    snapshot_at: int | None = None  # env step at which to keep (active learner, replay) for a fork


def play(prog: Program, cfg: Config, net, state: RunState, step_fn, probe: np.ndarray, bar,
         epsilon: Callable[[int], float]) -> tuple[list[dict], dict, Any]:
    """Runs one program from ``prog.start`` to ``prog.stop`` env steps per seed. Returns the metrics
    rows, throughput numbers and, if asked, the (active learner, replay) snapshot at ``snapshot_at``."""
    envs = SeedEnvs(prog.env_id, cfg.seeds, cfg.num_envs, prog.env_seed_base)
    queue = EpisodeQueue(cfg.seeds, cfg.num_envs, INSERT_BLOCK_PER_ENV * cfg.num_envs, envs.obs_shape,
                         envs.obs_dtype, cfg.gamma)
    probe_fn = C.make_probe_fn(net, cfg.dormant_tau)
    probe = jnp.asarray(probe)
    learners = len(prog.agents)
    rows: list[dict] = []
    losses: list[np.ndarray] = []
    snapshot = None
    measure_seconds = 0.0

    def record(step: int, metric: str, values) -> None:
        values = np.asarray(values, np.float64).reshape(learners, cfg.seeds)
        for a, agent in enumerate(prog.agents):
            for s in range(cfg.seeds):
                rows.append({"env": prog.env_id, "agent": agent, "config": prog.config, "seed": s, "step": step,
                             "metric": metric, "value": float(values[a, s])})

    def measure(step: int) -> None:
        nonlocal losses, measure_seconds
        t0 = time.time()
        params = stacked_params(state.learners)
        for name, v in probe_fn(params, probe).items():
            record(step, name, v)
        if losses:
            record(step, "loss", C.mean_and_stderr(np.stack(losses))[0].T)  # NaN mean: not learning yet
            losses = []
        if step % cfg.eval_every == 0:
            returns = C.evaluate_policies(net, params, prog.env_id, cfg.eval_episodes, seed=10_000,
                                          epsilon=cfg.eval_epsilon).mean(axis=1)
            record(step, "return", returns)
            bar.set_postfix({a: f"{r:.3g}" for a, r in zip(prog.agents, returns.reshape(learners, -1).mean(1))},
                            refresh=False)
        measure_seconds += time.time() - t0

    bar.set_description(f"{prog.env_id} {prog.config} {'forked' if prog.agents[0].startswith('forked') else 'tandem'}")
    measure(prog.start)
    obs = envs.reset()
    start_time = compile_seconds = time.time()
    for env_step in range(prog.start, prog.stop, cfg.num_envs):
        block, counts = queue.take()
        state, actions, loss = step_fn(state, block, counts, obs, epsilon(env_step))
        actions = np.asarray(actions)
        if env_step == prog.start:  # the first call compiles the step
            start_time, compile_seconds = time.time(), time.time() - compile_seconds
            measured_before = measure_seconds
        next_obs, reward, terminated, truncated = envs.step(actions)
        queue.add(obs, actions, reward, terminated | truncated)
        losses.append(np.asarray(loss))
        obs = next_obs
        done = env_step + cfg.num_envs
        bar.update(cfg.num_envs)
        if done % cfg.log_every == 0:
            measure(done)
        if done == prog.snapshot_at:
            snapshot = jax.device_get((state.learners[0], state.replay))
    envs.close()
    seconds = time.time() - start_time - (measure_seconds - measured_before)
    vector_steps = (prog.stop - prog.start) // cfg.num_envs - 1
    speed = {"program": f"{prog.env_id} {prog.config} {'+'.join(prog.agents)}", "seconds": round(seconds, 1),
             "compile_seconds": round(compile_seconds, 1), "measure_seconds": round(measure_seconds, 1),
             "env_steps_per_s": round(vector_steps * cfg.num_envs * cfg.seeds / seconds),
             "updates_per_s": round(vector_steps * cfg.updates_per_step * cfg.seeds * learners / seconds)}
    return rows, speed, snapshot


# ------------------------------------------------------------------------------------------------
# run(): tandem with each optimizer, the fork, write metrics.csv
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path) -> dict:
    """Per environment and optimizer, one tandem program (and, for ``fork_optimizer``, the forked
    program right after it, from its snapshot). A finished pair is kept under out/checkpoints/ and
    not redone; metrics.csv is rewritten after each."""
    from tqdm.auto import tqdm

    check_config(cfg)
    rows, speeds, reused = [], [], []
    total = len(cfg.env) * (len(cfg.optimizers) * cfg.num_env_steps + cfg.num_env_steps - fork_step(cfg))
    bar = tqdm(total=total, unit="env step", dynamic_ncols=True, desc="tandem")
    for env_id in cfg.env:
        probe = random_policy_states(env_id, cfg.probe_size)
        for optimizer in cfg.optimizers:
            forks = optimizer == cfg.fork_optimizer
            ckpt = checkpoint_dir(out, cfg, env_id, optimizer)
            if (ckpt / "metrics.csv").exists():
                rows += C.Metrics(ckpt / "metrics.csv").rows
                reused.append(str(ckpt))
                bar.update(cfg.num_env_steps + (cfg.num_env_steps - fork_step(cfg) if forks else 0))
                continue
            unit_rows = run_pair(cfg, env_id, optimizer, forks, probe, bar, speeds)
            C.write_metrics(ckpt, unit_rows)
            rows += unit_rows
            C.write_metrics(out, rows)
    bar.close()
    C.write_metrics(out, rows)
    for s in speeds:
        print(f"{s['program']}: {s['env_steps_per_s']} env steps/s, {s['updates_per_s']} agent updates/s "
              f"({s['seconds']} s stepping, {s['compile_seconds']} s compile, {s['measure_seconds']} s probe/eval)")
    return {"speed": speeds, "reused_from_checkpoints": reused, "fork_step": fork_step(cfg),
            "probe": f"{cfg.probe_size} states visited by a uniformly random policy"}


def run_pair(cfg: Config, env_id: str, optimizer: str, forks: bool, probe, bar, speeds: list) -> list[dict]:
    envs = C.make_env(env_id, 1, 0)
    net = C.default_network(env_id, envs.num_actions)
    shape, dtype = envs.obs_shape, envs.obs_dtype
    envs.close()
    config = f"opt={optimizer}"
    tandem = Program(env_id, config, TANDEM_AGENTS, 0, cfg.num_env_steps, env_seed_base=0,
                     snapshot_at=fork_step(cfg) if forks else None)
    state = init_tandem(net, cfg, optimizer, shape, dtype)
    step_fn = make_step(net, cfg, optimizer, ("double_dqn", "double_dqn"))
    rows, speed, snapshot = play(tandem, cfg, net, state, step_fn, probe, bar, lambda t: epsilon_at(cfg, t))
    speeds.append(speed)
    if forks:
        forked = Program(env_id, config, tuple(FORKED_LOSSES), fork_step(cfg), cfg.num_env_steps, env_seed_base=5_000)
        step_fn = make_step(net, cfg, optimizer, tuple(FORKED_LOSSES.values()))
        forked_rows, speed, _ = play(forked, cfg, net, init_forked(snapshot, cfg), step_fn, probe, bar,
                                     lambda t: cfg.epsilon_end)
        rows += forked_rows
        speeds.append(speed)
    return rows


def checkpoint_dir(out: Path, cfg: Config, env_id: str, optimizer: str) -> Path:
    fields = dataclasses.asdict(cfg) | {"env": env_id, "optimizers": None}
    fields["fork_optimizer"] = optimizer == cfg.fork_optimizer
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return out / "checkpoints" / f"{env_id.replace('/', '_')}_{optimizer}_{digest}"


# ------------------------------------------------------------------------------------------------
# Claims, computed from metrics.csv alone
# ------------------------------------------------------------------------------------------------

FINAL_WINDOW = 0.2  # "ends with": the mean over the evaluations (or probes) in the last 20% of the run


def final(m: C.Metrics, metric: str, **where) -> float:
    """Seed mean of each seed's mean over the points in the last FINAL_WINDOW of the run."""
    steps, grid = m.curves(metric=metric, **where)
    last = steps > steps[-1] - FINAL_WINDOW * steps[-1]
    return float(C.mean_and_stderr(C.mean_and_stderr(grid[:, last], axis=1)[0])[0])


def forked_start(m: C.Metrics, env: str) -> int:
    return min(r["step"] for r in m.select(env=env, agent="forked_dqn"))


def forked_drops(m: C.Metrics, env: str) -> dict[str, float]:
    """Return at the fork (all three copies are the same network there: their mean) minus the final
    return, per forked agent."""
    config = m.values("config", env=env, agent="forked_dqn")[0]
    start = forked_start(m, env)
    at_fork = np.nanmean([m.curves(env=env, agent=a, config=config, metric="return")[1][:, 0] for a in FORKED_LOSSES])
    return {a: float(at_fork - final(m, "return", env=env, agent=a, config=config)) for a in FORKED_LOSSES} | {
        "at_fork": float(at_fork), "fork_step": start}


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    pairs = [(e, c) for e in m.values("env") for c in m.values("config", env=e, agent="active")]
    name = lambda e, c: f"{e.split('/')[-1]} {c.split('=')[-1]}"
    finals = {metric: {(e, c): {a: final(m, metric, env=e, agent=a, config=c) for a in TANDEM_AGENTS}
                       for e, c in pairs} for metric in ("return", "srank")}
    fmt = lambda metric: "; ".join(f"{name(e, c)}: {v['passive']:.3g} vs {v['active']:.3g}"
                                   for (e, c), v in finals[metric].items())
    lower = lambda metric: all(v["passive"] < v["active"] for v in finals[metric].values())
    envs = [e for e in m.values("env") if m.select(env=e, agent="forked_dqn")]
    drops = {e: forked_drops(m, e) for e in envs}
    window = f"mean over the last {FINAL_WINDOW:.0%} of the run, then over seeds"
    return [
        C.Claim("tandem.1", "The passive agent ends with a lower return than the active agent",
                f"final return passive vs active ({window}), per env and optimizer", fmt("return"), lower("return")),
        C.Claim("tandem.2", "The passive agent ends with a lower srank than the active agent",
                f"final srank passive vs active ({window}), per env and optimizer", fmt("srank"), lower("srank")),
        C.Claim("tandem.3", "After the fork, the passive Q-learning agent's return falls more than the BVE and "
                "Monte-Carlo agents' returns",
                f"return at the fork minus final return ({window}) for dqn / bve / mc, per env",
                "; ".join(f"{e.split('/')[-1]} (fork at {d['fork_step']}, return {d['at_fork']:.3g}): "
                          + " / ".join(f"{d[a]:.3g}" for a in FORKED_LOSSES) for e, d in drops.items()),
                all(d["forked_dqn"] > d["forked_bve"] and d["forked_dqn"] > d["forked_mc"] for d in drops.values())
                if drops else None),
    ]


# ------------------------------------------------------------------------------------------------
# plot(): every figure from metrics.csv alone
# ------------------------------------------------------------------------------------------------

OPT_COLORS = {"opt=adam": "tab:blue", "opt=rmsprop": "tab:orange"}
AGENT_STYLES = {"active": "-", "passive": "--"}
FORKED_COLORS = {"forked_bve": "tab:green", "forked_mc": "tab:purple", "forked_dqn": "tab:red"}  # DQN on top
FORKED_LABELS = {"forked_dqn": "passive: double Q-learning", "forked_bve": "passive: BVE (SARSA)",
                 "forked_mc": "passive: Monte-Carlo return"}
PANELS = {"return": "evaluation return", "srank": "srank (512 probe states)", "dead_units": "dead units",
          "dormant_frac": "dormant fraction (tau = 0.025)"}


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    envs = m.values("env")
    note = C.seeds_note(m, env=envs[0], agent="active")

    # Fig. 17: tandem, active (solid) vs passive (dashed), per optimizer.
    fig, axes = plt.subplots(len(envs), len(PANELS), figsize=(3.6 * len(PANELS), 2.9 * len(envs) + 0.4),
                             squeeze=False, layout="constrained")
    for i, env in enumerate(envs):
        for config in m.values("config", env=env, agent="active"):
            for agent, style in AGENT_STYLES.items():
                for j, metric in enumerate(PANELS):
                    C.plot_band(axes[i, j], *m.curves(env=env, agent=agent, config=config, metric=metric),
                                f"{agent}, {config.split('=')[-1]}", OPT_COLORS.get(config), ls=style)
        for j, (metric, label) in enumerate(PANELS.items()):
            axes[i, j].set(title=f"{env}: {metric}", ylabel=label)
            axes[-1, j].set(xlabel="environment steps per seed")
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 17: tandem double DQN, active agent acts and learns, passive agent learns from the same "
                 f"batches ({note})")
    C.save_figure(fig, out, "fig17_tandem")

    # Fig. 18: forked tandem, the passive copy after the fork per loss.
    forked_envs = [e for e in envs if m.select(env=e, agent="forked_dqn")]
    if not forked_envs:
        return
    fig, axes = plt.subplots(len(forked_envs), 2, figsize=(10, 3.0 * len(forked_envs) + 0.4), squeeze=False,
                             layout="constrained")
    for i, env in enumerate(forked_envs):
        config = m.values("config", env=env, agent="forked_dqn")[0]
        start = forked_start(m, env)
        for j, metric in enumerate(("return", "srank")):
            ax = axes[i, j]
            steps, grid = m.curves(env=env, agent="active", config=config, metric=metric)
            C.plot_band(ax, steps[steps <= start], grid[:, steps <= start], "active, before the fork", "black")
            C.plot_band(ax, steps[steps >= start], grid[:, steps >= start], "active, unforked (tandem run)", "0.6",
                        ls=":")
            for agent, color in FORKED_COLORS.items():
                C.plot_band(ax, *m.curves(env=env, agent=agent, config=config, metric=metric), FORKED_LABELS[agent],
                            color)
            ax.axvline(start, color="0.3", lw=0.8, ls="--")
            ax.set(title=f"{env}: {metric} ({config.split('=')[-1]})", ylabel=PANELS[metric])
        axes[-1, 0].set(xlabel="environment steps per seed")
        axes[-1, 1].set(xlabel="environment steps per seed")
    axes[0, 0].legend()
    fig.suptitle(f"Fig. 18: forked tandem, the active copy frozen at the dashed line keeps acting ({note})")
    C.save_figure(fig, out, "fig18_forked_tandem")


# ------------------------------------------------------------------------------------------------


def main(args: Args) -> None:
    C.run_study(args, PRESETS, run=run, claims=claims, plot=plot)


if __name__ == "__main__":
    C.cli(Args, main)

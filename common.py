"""Shared core of the reproduction of "An empirical study of implicit regularization in deep
offline RL" (Gulcehre et al., TMLR 2022).

Every experiment script imports this module and nothing else of the repo. Sections, in the order
data flows through a run:

  1. Rank metrics        effective_rank (srank), dead_units, dormant_fraction
  2. Networks            MLP, MinAtarCNN, NatureCNN, RecurrentQNetwork -> (q or logits, features)
  3. Losses              double_q_td_error, sarsa_td_error, mc_return_error, bc_loss, agent_loss
  4. Environments        make_env: one batched numpy interface over bsuite, MinAtar and ALE
  5. Datasets            Dataset, collect_dataset (local, cached), subsample, load_dqn_replay
  6. Offline trainer     jit(vmap over sweep members)(lax.scan over K steps) per chunk
  7. Evaluation          every member's episodes at once in batched environments
  8. Results and CLI     metrics.csv / meta.json / claims.json, presets, plotting style

Pure functions (sections 1, 3 and the dataset gathers) are tested directly in tests/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("RANKRL_DATA_DIR", REPO_DIR / "data"))

Array = jax.Array
PyTree = Any


class DatasetError(RuntimeError):
    """A dataset file is missing, truncated or not in the expected format (the message names it)."""


# ================================================================================================
# 1. Rank metrics
# ================================================================================================


def per_member(fn: Callable) -> Callable:
    """``jax.vmap(fn)`` over the leading (member) axis of every argument, but run one member at a
    time (``lax.map``). Use it for any per-member function that calls LAPACK: an SVD (srank), a QR
    (the LSTM's orthogonal initialiser), an eigendecomposition.

    Why: jaxlib 0.10's CPU LAPACK kernels split a *batched* call into chunks, schedule them on
    XLA's intra-op thread pool and block a pool worker until they finish (``ParallelBatchMap``
    in jaxlib/cpu/lapack_kernels.cc). When as many batched kernels run at once as the pool has
    workers (2 on a 2-core machine), every worker waits for work that no free worker can run:
    the process hangs forever. An unbatched call (one matrix) runs inline and never waits on the
    pool. The results are bitwise the same; the cost is that members' factorisations no longer
    run in parallel, which the probe and the initialisation can afford.
    """
    return lambda *args: jax.lax.map(lambda xs: fn(*xs), args)


def effective_rank(features: Array, delta: float = 0.01) -> Array:
    """srank_delta of a (batch, units) feature matrix, exactly as the paper's Appendix A.11 stub.

    With singular values s (descending) and c = cumsum(s), the stub returns
    ``n - #{k : c_k >= (1 - delta) * sum(s)} + 1`` with n = min(batch, units). That equals the
    smallest k with sum(s[:k]) >= (1 - delta) * sum(s), and an all-zero matrix gives 1 (every
    c_k = 0 >= 0). Works under jit; over members, call it through ``per_member`` (an SVD).
    """
    s = jnp.linalg.svd(features.astype(jnp.float32), compute_uv=False)
    cumsum = jnp.cumsum(s)
    crossed = cumsum >= (1.0 - delta) * jnp.sum(s)
    return (s.shape[-1] - jnp.sum(crossed, axis=-1) + 1).astype(jnp.int32)


def dead_units(features: Array) -> Array:
    """Number of units (columns) whose activation is exactly zero for every input of the batch."""
    return jnp.sum(jnp.all(features == 0, axis=0)).astype(jnp.int32)


def dormant_fraction(features: Array, tau: float = 0.025) -> Array:
    """Fraction of tau-dormant units (Sokar et al. 2023): a unit's mean |activation| over the batch,
    divided by the mean of that over the layer, is <= tau. An all-zero layer is fully dormant."""
    score = jnp.mean(jnp.abs(features), axis=0)
    normalised = score / jnp.maximum(jnp.mean(score), 1e-12)
    return jnp.mean(normalised <= tau)


# ================================================================================================
# 2. Networks: every network returns (q_values_or_logits, penultimate_features)
# ================================================================================================

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "tanh": nn.tanh,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "swish": nn.swish,
    "leaky_relu": nn.leaky_relu,
}

INITS = {
    "lecun": nn.initializers.lecun_normal(),  # flax's default (variance 1/fan_in)
    "he": nn.initializers.he_normal(),  # the depth study (Appendix A.1) uses He init
}


def activation_fn(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Feed-forward Q network (bsuite): hidden layers of the given sizes, then a linear head.
    Observations of any shape are flattened. Every hidden layer's output is sown into the
    "intermediates" collection, so per-layer ranks (the depth study) can be read with
    ``net.apply(params, obs, mutable=["intermediates"])``."""

    num_actions: int
    hidden: Sequence[int] = (64, 64)
    activation: str = "relu"
    init_scheme: str = "lecun"  # lecun (flax default) or he

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        act = activation_fn(self.activation)
        for i, width in enumerate(self.hidden):
            x = act(nn.Dense(width, kernel_init=INITS[self.init_scheme], name=f"hidden_{i}")(x))
            self.sow("intermediates", f"features_{i}", x)
        return nn.Dense(self.num_actions, kernel_init=INITS[self.init_scheme], name="head")(x), x


class PatchConv(nn.Module):
    """A stride-1 VALID convolution written as one matrix product of image patches (im2col).

    Same parameters (kernel (kh, kw, C, F), bias (F,)) and same result as ``nn.Conv(F, (kh, kw),
    padding="VALID")``; on a CPU, for MinAtar's 10x10 inputs, one (batch*64, 9C) x (9C, F) matmul
    is several times faster than XLA's generic convolution, which is what makes the MinAtar
    presets fit on a laptop."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        channels = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, channels, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
        patches = jnp.concatenate([x[:, i:i + out_h, j:j + out_w, :] for i in range(kh) for j in range(kw)], axis=-1)
        return patches @ kernel.reshape(kh * kw * channels, self.features) + bias


class MinAtarCNN(nn.Module):
    """MinAtar network of Young & Tian (2019): Conv(16, 3x3, stride 1, valid) -> 128 hidden."""

    num_actions: int
    activation: str = "relu"
    hidden: int = 128

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        act = activation_fn(self.activation)
        x = act(PatchConv(16, (3, 3), name="conv")(obs.astype(jnp.float32)))
        x = act(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_actions)(x), x


class NatureCNN(nn.Module):
    """Atari torso of Appendix A.12 (Conv 32x8x8/4, 64x4x4/2, 64x3x3/1) and one 512-unit layer.
    Takes stacked uint8 frames (batch, 4, 84, 84), as the ALE vector env and the dataset give them."""

    num_actions: int
    activation: str = "relu"
    hidden: int = 512

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        act = activation_fn(self.activation)
        x = jnp.transpose(obs, (0, 2, 3, 1)).astype(jnp.float32) / 255.0  # NCHW frames -> NHWC
        x = act(nn.Conv(32, (8, 8), strides=4, padding="VALID")(x))
        x = act(nn.Conv(64, (4, 4), strides=2, padding="VALID")(x))
        x = act(nn.Conv(64, (3, 3), strides=1, padding="VALID")(x))
        x = act(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_actions)(x), x


class RecurrentQNetwork(nn.Module):
    """LSTM core over an observation history (batch, time, ...); the features are the LSTM's output
    at the last step. ``cell_activation`` replaces the LSTM's tanh (on the cell input and on the
    cell state before the output gate), as in the paper's Section 6 ablation."""

    num_actions: int
    hidden: int = 64
    cell_activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        x = obs.reshape(obs.shape[0], obs.shape[1], -1).astype(jnp.float32)
        cell = nn.OptimizedLSTMCell(self.hidden, activation_fn=activation_fn(self.cell_activation))
        outputs = nn.RNN(cell)(x)
        features = outputs[:, -1]
        return nn.Dense(self.num_actions)(features), features


def default_network(env_id: str, num_actions: int, activation: str = "relu") -> nn.Module:
    """The paper's network for an environment family (Appendix A.12; MinAtar's own for MinAtar)."""
    family = env_id.split("/")[0]
    if family == "bsuite":
        return MLP(num_actions, (64, 64), activation)
    if family == "minatar":
        return MinAtarCNN(num_actions, activation)
    if family == "atari":
        return NatureCNN(num_actions, activation)
    raise ValueError(f"no default network for {env_id!r}")


# ================================================================================================
# 3. Losses: pure functions on batched arrays (Dopamine / rlax conventions)
# ================================================================================================


def huber(x: Array, delta: float = 1.0) -> Array:
    """Huber loss: quadratic within |x| <= delta, linear outside."""
    abs_x = jnp.abs(x)
    quadratic = jnp.minimum(abs_x, delta)
    return 0.5 * quadratic**2 + delta * (abs_x - quadratic)


def _take(q: Array, a: Array) -> Array:
    return jnp.take_along_axis(q, a[:, None].astype(jnp.int32), axis=-1)[:, 0]


def double_q_td_error(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector) -> Array:
    """Double Q-learning TD error (van Hasselt et al. 2016): the online net picks a*, the target net
    values it. ``discount_t`` is gamma * (1 - terminal). The target carries no gradient."""
    best = jnp.argmax(q_t_selector, axis=-1)
    target = r_t + discount_t * _take(q_t_value, best)
    return jax.lax.stop_gradient(target) - _take(q_tm1, a_tm1)


def sarsa_td_error(q_tm1, a_tm1, r_t, discount_t, q_t, a_t) -> Array:
    """SARSA TD error on the logged next action: behaviour value estimation (BVE)."""
    target = r_t + discount_t * _take(q_t, a_t)
    return jax.lax.stop_gradient(target) - _take(q_tm1, a_tm1)


def mc_return_error(q_tm1, a_tm1, mc_return) -> Array:
    """Regression error of Q(s, a) onto the logged discounted Monte-Carlo return."""
    return mc_return - _take(q_tm1, a_tm1)


def bc_loss(logits: Array, actions: Array) -> Array:
    """Behaviour cloning: mean cross-entropy of the logged actions."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, actions.astype(jnp.int32)))


class Batch(NamedTuple):
    obs: Array
    action: Array
    reward: Array
    discount: Array  # 1 - terminal (the env's discount; gamma is applied by the loss)
    next_obs: Array
    next_action: Array
    mc_return: Array


AGENT_LOSSES = ("double_dqn", "bve", "mc", "bc")


def agent_loss(
    kind: str, apply_fn: Callable, params: PyTree, target_params: PyTree, batch: Batch,
    gamma: float, clip_rewards: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """Scalar training loss of one agent on one batch, and auxiliary outputs: mean Q and the online
    network's features of ``batch.obs`` (still differentiable, so an auxiliary loss built on them,
    such as CURL's, trains the same forward pass instead of repeating it).

    double_dqn: Huber(delta=1) of the double-Q TD error; bve: Huber of the SARSA error on the logged
    next action; mc: Huber of the Monte-Carlo regression error; bc: cross-entropy. Gradients flow
    only into ``params``: the target network's outputs are constants of the loss.
    """
    if kind not in AGENT_LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {AGENT_LOSSES}")
    reward = jnp.clip(batch.reward, -1.0, 1.0) if clip_rewards else batch.reward
    discount = gamma * batch.discount
    if kind == "double_dqn":
        # One forward pass of the online net on [s, s'] (cheaper than two on small CPU matmuls).
        q_both, features_both = apply_fn(params, jnp.concatenate([batch.obs, batch.next_obs]))
        q_tm1, q_t_selector = jnp.split(q_both, 2)
        q_t_value, _ = apply_fn(target_params, batch.next_obs)
        td = double_q_td_error(q_tm1, batch.action, reward, discount,
                               jax.lax.stop_gradient(q_t_value), jax.lax.stop_gradient(q_t_selector))
        return jnp.mean(huber(td)), {"q_mean": jnp.mean(q_tm1), "features": features_both[: q_tm1.shape[0]]}
    if kind == "bve":
        q_tm1, features = apply_fn(params, batch.obs)
        q_t, _ = apply_fn(target_params, batch.next_obs)
        td = sarsa_td_error(q_tm1, batch.action, reward, discount,
                            jax.lax.stop_gradient(q_t), batch.next_action)
        return jnp.mean(huber(td)), {"q_mean": jnp.mean(q_tm1), "features": features}
    if kind == "mc":
        q_tm1, features = apply_fn(params, batch.obs)
        return (jnp.mean(huber(mc_return_error(q_tm1, batch.action, batch.mc_return))),
                {"q_mean": jnp.mean(q_tm1), "features": features})
    logits, features = apply_fn(params, batch.obs)  # bc
    return bc_loss(logits, batch.action), {"q_mean": jnp.mean(logits), "features": features}


# ================================================================================================
# 4. Environments: one batched numpy interface
# ================================================================================================

BSUITE_GAMES = ("catch", "cartpole", "mountain_car", "memory_len")
MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
MEMORY_LENGTH = 10  # bsuite/memory_len: steps between the context and the query


class VectorEnv:
    """``num_envs`` copies of one environment, stepped together with automatic reset.

    ``reset() -> obs`` and ``step(actions) -> (obs, reward, terminated, truncated)``; for an env whose
    episode ended, ``obs`` is already the first observation of its next episode. ``frames_stacked``
    is > 1 where the env itself stacks frames (ALE)."""

    num_envs: int
    num_actions: int
    obs_shape: tuple[int, ...]
    obs_dtype: Any
    frames_stacked: int = 1

    def reset(self) -> np.ndarray:
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _LoopEnv(VectorEnv):
    """A Python loop over single environments (bsuite's dm_env and MinAtar are ~10-100 us a step)."""

    def __init__(self, envs: list, num_actions: int, obs_shape, obs_dtype):
        self.envs, self.num_envs, self.num_actions = envs, len(envs), num_actions
        self.obs_shape, self.obs_dtype = tuple(obs_shape), obs_dtype

    def _reset_one(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _step_one(self, i: int, action: int) -> tuple[np.ndarray, float, bool, bool]:
        raise NotImplementedError

    def reset(self) -> np.ndarray:
        return np.stack([self._reset_one(i) for i in range(self.num_envs)])

    def step(self, actions):
        obs = np.empty((self.num_envs, *self.obs_shape), self.obs_dtype)
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for i, a in enumerate(np.asarray(actions)):
            obs[i], reward[i], terminated[i], truncated[i] = self._step_one(i, int(a))
            if terminated[i] or truncated[i]:
                obs[i] = self._reset_one(i)
        return obs, reward, terminated, truncated


class BsuiteEnv(_LoopEnv):
    def __init__(self, game: str, num_envs: int, seed: int):
        from bsuite.environments import cartpole, catch, memory_chain, mountain_car

        seeds = np.random.SeedSequence(seed).generate_state(num_envs)
        make = {
            "catch": lambda s: catch.Catch(seed=s),
            "cartpole": lambda s: cartpole.Cartpole(seed=s),
            "mountain_car": lambda s: mountain_car.MountainCar(seed=s),
            "memory_len": lambda s: memory_chain.MemoryChain(memory_length=MEMORY_LENGTH, num_bits=1, seed=s),
        }[game]
        envs = [make(int(s)) for s in seeds]
        spec = envs[0].observation_spec()
        super().__init__(envs, envs[0].action_spec().num_values, spec.shape, np.float32)

    def _reset_one(self, i):
        return self.envs[i].reset().observation

    def _step_one(self, i, action):
        ts = self.envs[i].step(action)
        last = ts.last()
        # dm_env: a last step with discount 0 is a termination, with discount > 0 a truncation.
        return ts.observation, ts.reward or 0.0, last and ts.discount == 0, last and ts.discount != 0


class MinAtarEnv(_LoopEnv):
    def __init__(self, game: str, num_envs: int, seed: int, sticky_action_prob: float = 0.1,
                 max_episode_steps: int = 10_000):
        from minatar import Environment

        envs = [Environment(game, sticky_action_prob=sticky_action_prob) for _ in range(num_envs)]
        for env, s in zip(envs, np.random.SeedSequence(seed).generate_state(num_envs)):
            env.seed(int(s))
        self.action_set = np.asarray(envs[0].minimal_action_set())
        self.max_episode_steps, self.steps = max_episode_steps, np.zeros(num_envs, int)
        super().__init__(envs, len(self.action_set), envs[0].state_shape(), np.uint8)

    def _reset_one(self, i):
        self.envs[i].reset()
        self.steps[i] = 0
        return self.envs[i].state()

    def _step_one(self, i, action):
        reward, terminal = self.envs[i].act(int(self.action_set[action]))
        self.steps[i] += 1
        return self.envs[i].state(), reward, bool(terminal), self.steps[i] >= self.max_episode_steps


class AtariEnv(VectorEnv):
    """ALE's C++ vector env: 84x84 gray, frame skip 4, 4 stacked frames, noop reset, sticky actions
    0.25 as in the DQN Replay data; rewards are not clipped here (the loss clips them)."""

    frames_stacked = 4

    def __init__(self, game: str, num_envs: int, seed: int):
        from ale_py.vector_env import AtariVectorEnv

        self.env = AtariVectorEnv(game=game, num_envs=num_envs, repeat_action_probability=0.25,
                                  reward_clipping=False, autoreset_mode="SameStep")
        self.seed, self.num_envs = seed, num_envs
        self.num_actions = int(self.env.single_action_space.n)
        self.obs_shape, self.obs_dtype = (4, 84, 84), np.uint8

    def reset(self):
        return self.env.reset(seed=self.seed)[0]

    def step(self, actions):
        obs, reward, terminated, truncated, _ = self.env.step(np.asarray(actions))
        return obs, reward.astype(np.float32), terminated, truncated

    def close(self):
        self.env.close()


def _atari_game(name: str) -> str:
    import ale_py.roms

    snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    if snake not in ale_py.roms.get_all_rom_ids():
        raise ValueError(f"unknown Atari game {name!r} in atari/{name}")
    return snake


def validate_env_id(env_id: str) -> str:
    """Returns the family of a valid id; raises ValueError naming the id and the valid families."""
    family, _, game = env_id.partition("/")
    valid = (f"valid ids: bsuite/{{{','.join(BSUITE_GAMES)}}}, minatar/{{{','.join(MINATAR_GAMES)}}}, "
             "atari/<Game> (e.g. atari/Pong)")
    if (family == "bsuite" and game in BSUITE_GAMES) or (family == "minatar" and game in MINATAR_GAMES):
        return family
    if family == "atari" and game:
        try:
            _atari_game(game)
            return family
        except ValueError:
            pass
    raise ValueError(f"unknown environment id {env_id!r}; {valid}")


def make_env(env_id: str, num_envs: int, seed: int) -> VectorEnv:
    """One constructor for every family: ``bsuite/<game>``, ``minatar/<game>``, ``atari/<Game>``."""
    family = validate_env_id(env_id)
    game = env_id.split("/", 1)[1]
    if family == "bsuite":
        return BsuiteEnv(game, num_envs, seed)
    if family == "minatar":
        return MinAtarEnv(game, num_envs, seed)
    return AtariEnv(_atari_game(game), num_envs, seed)


class HistoryStack:
    """Keeps the last ``history`` observations of each env, zero before its episode start (the same
    padding the datasets use), for agents that read a history (the recurrent agent)."""

    def __init__(self, first_obs: np.ndarray, history: int):
        self.buffer = np.zeros((first_obs.shape[0], history, *first_obs.shape[1:]), first_obs.dtype)
        self.buffer[:, -1] = first_obs

    def push(self, obs: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        self.buffer = np.roll(self.buffer, -1, axis=1)
        self.buffer[episode_start] = 0
        self.buffer[:, -1] = obs
        return self.buffer


# ================================================================================================
# 5. Datasets
# ================================================================================================


@flax.struct.dataclass
class Dataset:
    """Transitions stored as rows of one array per field, frames stored once.

    Row i holds the observation s_i (one frame), the action a_i taken there, the reward r_i and
    whether that step ended the episode. The next observation of row i is row i+1. Each episode is
    preceded by ``history - 1`` all-zero padding rows (the DQN Replay layout), so the observation
    of row i is rows i-history+1..i stacked, with zeros before the episode start; padding rows and
    rows without a successor are not in ``valid``, the rows a sampler may draw.
    """

    obs: Array  # (rows, *frame_shape)
    action: Array  # (rows,) int32
    reward: Array  # (rows,) float32
    terminal: Array  # (rows,) float32, 1 if the step from row i ended the episode
    mc_return: Array  # (rows,) float32, discounted return from row i to its episode's end
    valid: Array  # (transitions,) int32 row indices that may be sampled
    num_actions: int = flax.struct.field(pytree_node=False)
    history: int = flax.struct.field(pytree_node=False, default=1)

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def stacked_obs(self, rows: Array) -> Array:
        """Observations of ``rows``: (batch, *frame) when history is 1, else (batch, history, *frame)."""
        if self.history == 1:
            return self.obs[rows]
        return self.obs[rows[:, None] + jnp.arange(1 - self.history, 1)]

    def batch(self, rows: Array) -> Batch:
        """Gathers a training batch for sampled row indices (jit-able, on device)."""
        next_rows = jnp.minimum(rows + 1, self.obs.shape[0] - 1)  # clamped only for terminal last rows
        return Batch(
            obs=self.stacked_obs(rows), action=self.action[rows], reward=self.reward[rows],
            discount=1.0 - self.terminal[rows], next_obs=self.stacked_obs(next_rows),
            next_action=self.action[next_rows], mc_return=self.mc_return[rows],
        )

    def nbytes(self) -> int:
        return sum(int(np.asarray(x).nbytes) for x in jax.tree_util.tree_leaves(self))


def returns_to_go(reward: np.ndarray, terminal: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return from each row to its episode's end (the last episode of a buffer that
    stops mid-episode gets the partial sum)."""
    out = np.zeros(len(reward), np.float32)
    acc = 0.0
    for i in range(len(reward) - 1, -1, -1):
        acc = reward[i] + gamma * acc * (1.0 - terminal[i])
        out[i] = acc
    return out


def make_dataset(obs, action, reward, terminal, valid, num_actions, history, gamma=0.99) -> Dataset:
    return Dataset(
        obs=jnp.asarray(obs), action=jnp.asarray(action, jnp.int32),
        reward=jnp.asarray(reward, jnp.float32), terminal=jnp.asarray(terminal, jnp.float32),
        mc_return=jnp.asarray(returns_to_go(np.asarray(reward, np.float32), np.asarray(terminal, np.float32), gamma)),
        valid=jnp.asarray(valid, jnp.int32), num_actions=int(num_actions), history=int(history),
    )


def subsample(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """A uniform subsample of the sampleable transitions (rows stay; only ``valid`` shrinks)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    keep = max(1, int(round(fraction * len(ds))))
    return ds.replace(valid=jnp.sort(ds.valid[jnp.asarray(order[:keep])]))


# ---- local collection: an online DQN with action noise (the RL Unplugged bsuite recipe) ----------


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Online DQN that generates a dataset. Every transition it takes is logged; with probability
    ``noise`` its action is replaced by a uniformly random one before the env sees it."""

    num_envs: int = 8
    learning_rate: float = 1e-3  # Acme's DQN default
    batch_size: int = 32
    gamma: float = 0.99
    target_update_period: int = 100
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_fraction: float = 0.2  # fraction of the run over which epsilon anneals
    updates_per_env_step: int = 1  # gradient steps per vector step of num_envs transitions
    learning_starts: int = 500


COLLECT_VERSION = 1  # bump when the collection algorithm changes: old caches are ignored


def dataset_cache_path(env_id: str, noise: float, num_transitions: int, seed: int, history: int,
                       cfg: CollectConfig, data_dir: Path | None = None) -> Path:
    key = json.dumps([COLLECT_VERSION, env_id, noise, num_transitions, seed, history,
                      dataclasses.asdict(cfg)], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"{env_id.replace('/', '_')}_noise{noise:g}_n{num_transitions}_s{seed}_h{history}_{digest}.npz"
    return Path(data_dir or DATA_DIR) / name


def _atomic_write(path: Path, write: Callable[[Any], None], suffix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def collect_dataset(env_id: str, noise: float, num_transitions: int, seed: int, history: int = 1,
                    cfg: CollectConfig = CollectConfig(), data_dir: Path | None = None,
                    progress: bool = True) -> Dataset:
    """Trains an online double DQN from scratch on ``env_id`` and logs all its transitions.

    Cached under ``data/`` keyed by every argument (written atomically, reused on the next call;
    a corrupt cache file is reported and remade). ``history`` > 1 inserts that many - 1 zero rows
    before each episode so that agents reading observation histories can be trained on it.
    """
    validate_env_id(env_id)
    path = dataset_cache_path(env_id, noise, num_transitions, seed, history, cfg, data_dir)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            return make_dataset(**{k: arrays[k] for k in ("obs", "action", "reward", "terminal", "valid")},
                                num_actions=int(arrays["num_actions"]), history=history, gamma=cfg.gamma)
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            print(f"warning: cached dataset {path} is unreadable ({e}); collecting it again", file=sys.stderr)
    arrays = _collect(env_id, noise, num_transitions, seed, history, cfg, progress)
    _atomic_write(path, lambda f: np.savez_compressed(f, **arrays), ".npz")
    return make_dataset(**{k: arrays[k] for k in ("obs", "action", "reward", "terminal", "valid")},
                        num_actions=int(arrays["num_actions"]), history=history, gamma=cfg.gamma)


def _collect(env_id, noise, num_transitions, seed, history, cfg: CollectConfig, progress) -> dict:
    from tqdm.auto import tqdm

    key = jax.random.key(seed)
    key, init_key = jax.random.split(key)
    env = make_env(env_id, cfg.num_envs, seed)
    rng = np.random.default_rng(seed)
    net = default_network(env_id, env.num_actions)
    obs = env.reset()
    params = net.init(init_key, obs[:1])
    target_params = params
    opt = optax.adam(cfg.learning_rate)
    opt_state = opt.init(params)

    @jax.jit
    def greedy(params, obs):
        return jnp.argmax(net.apply(params, obs)[0], axis=-1)

    @jax.jit
    def update(params, target_params, opt_state, batch):
        grads = jax.grad(lambda p: agent_loss("double_dqn", net.apply, p, target_params, batch, cfg.gamma)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # The agent's own replay buffer (explicit next observations); the logged dataset is kept apart,
    # as one stream of rows per env, in the layout Dataset expects.
    capacity = num_transitions
    replay = {"obs": np.zeros((capacity, *env.obs_shape), env.obs_dtype), "next_obs": None,
              "action": np.zeros(capacity, np.int32), "reward": np.zeros(capacity, np.float32),
              "discount": np.zeros(capacity, np.float32)}
    replay["next_obs"] = np.zeros_like(replay["obs"])
    size = 0
    streams = [{"obs": [], "action": [], "reward": [], "terminal": [], "valid": []} for _ in range(env.num_envs)]

    def pad(stream):
        for _ in range(history - 1):
            stream["obs"].append(np.zeros(env.obs_shape, env.obs_dtype))
            for k, v in (("action", 0), ("reward", 0.0), ("terminal", 0.0), ("valid", False)):
                stream[k].append(v)

    for s in streams:
        pad(s)
    decay_steps = max(1, int(cfg.epsilon_decay_fraction * num_transitions))
    steps, updates = 0, 0
    bar = tqdm(total=num_transitions, desc=f"collect {env_id} noise={noise:g}", disable=not progress, leave=False)
    while steps < num_transitions:
        epsilon = max(cfg.epsilon_end, cfg.epsilon_start - (cfg.epsilon_start - cfg.epsilon_end) * steps / decay_steps)
        action = np.asarray(greedy(params, obs))
        explore = rng.random(env.num_envs) < epsilon
        action = np.where(explore, rng.integers(env.num_actions, size=env.num_envs), action)
        # The RL Unplugged bsuite recipe: the logged action is replaced by a random one w.p. noise.
        replace = rng.random(env.num_envs) < noise
        action = np.where(replace, rng.integers(env.num_actions, size=env.num_envs), action).astype(np.int32)
        next_obs, reward, terminated, truncated = env.step(action)
        for i, stream in enumerate(streams):
            stream["obs"].append(obs[i])
            stream["action"].append(action[i])
            stream["reward"].append(reward[i])
            stream["terminal"].append(float(terminated[i]))
            stream["valid"].append(not truncated[i])  # a truncated step's successor row is a new episode
            if terminated[i] or truncated[i]:
                pad(stream)
            if not truncated[i] and size < capacity:  # next_obs of a finished env is a reset obs:
                j = size  # harmless for terminals (discount 0), so only truncations are skipped
                replay["obs"][j], replay["next_obs"][j] = obs[i], next_obs[i]
                replay["action"][j], replay["reward"][j] = action[i], reward[i]
                replay["discount"][j] = 0.0 if terminated[i] else 1.0
                size += 1
        obs = next_obs
        steps += env.num_envs
        bar.update(env.num_envs)
        if size >= cfg.learning_starts:
            for _ in range(cfg.updates_per_env_step):
                idx = rng.integers(size, size=cfg.batch_size)
                batch = Batch(obs=replay["obs"][idx], action=replay["action"][idx], reward=replay["reward"][idx],
                              discount=replay["discount"][idx], next_obs=replay["next_obs"][idx],
                              next_action=replay["action"][idx], mc_return=replay["reward"][idx])
                params, opt_state = update(params, target_params, opt_state, batch)
                updates += 1
                if updates % cfg.target_update_period == 0:
                    target_params = params
    bar.close()
    env.close()
    for s in streams:  # the last row of a stream has no successor unless it ended its episode
        if s["valid"] and s["terminal"][-1] == 0.0:
            s["valid"][-1] = False
    cat = {k: np.concatenate([np.asarray(s[k]) for s in streams]) for k in streams[0]}
    return {"obs": cat["obs"].astype(env.obs_dtype), "action": cat["action"].astype(np.int32),
            "reward": cat["reward"].astype(np.float32), "terminal": cat["terminal"].astype(np.float32),
            "valid": np.flatnonzero(cat["valid"]).astype(np.int32), "num_actions": np.asarray(env.num_actions)}


# ---- the DQN Replay Dataset (Agarwal et al. 2020), the data behind RL Unplugged Atari -------------

DQN_REPLAY_FIELDS = ("observation", "action", "reward", "terminal")


def _load_gz_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"missing DQN Replay file {path}")
    try:
        with gzip.open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DatasetError(f"corrupt DQN Replay file {path}: {e}") from None


def dqn_replay_valid(terminal: np.ndarray, add_count: int, invalid_range: np.ndarray, history: int) -> np.ndarray:
    """Sampleable rows of one DQN Replay checkpoint (Dopamine's ``is_valid_transition``):
    the row was written, its stack is in the array and does not reach into the previous episode
    (no terminal among the ``history - 1`` rows before it), it is not in ``invalid_range`` (the rows
    around the write cursor when the buffer was saved), and it has a successor row in the array.
    Rows of a wrapped circular buffer that would need the wrap are dropped (at most ``history``)."""
    rows = len(terminal)
    filled = min(int(add_count), rows)
    idx = np.arange(rows)
    ok = (idx >= history - 1) & (idx < filled - 1)
    term = terminal.astype(bool)
    for back in range(1, history):
        ok[history - 1:] &= ~term[history - 1 - back: rows - back]
    ok[np.asarray(invalid_range, dtype=np.int64) % rows] = False
    return np.flatnonzero(ok)


def load_dqn_replay(directory: str | Path, checkpoints: Sequence[int], num_actions: int | None = None,
                    history: int = 4, gamma: float = 0.99) -> Dataset:
    """Loads DQN Replay checkpoints ``$store$_<field>_ckpt.<N>.gz`` of one game and run.

    Frames are stored once (84x84 uint8 per row) and stacked at gather time; the zero frames that
    Dopamine writes before each episode provide the padding. Checkpoints are concatenated; the
    validity rule keeps stacks and successors inside their own checkpoint. Raises DatasetError
    naming any missing or corrupt file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"DQN Replay directory {directory} does not exist (pass --data-dir "
                           "<...>/<Game>/<run>/replay_logs)")
    parts = {k: [] for k in (*DQN_REPLAY_FIELDS, "valid")}
    offset = 0
    for n in checkpoints:
        arrays = {k: _load_gz_npy(directory / f"$store$_{k}_ckpt.{n}.gz") for k in DQN_REPLAY_FIELDS}
        add_count = int(_load_gz_npy(directory / f"add_count_ckpt.{n}.gz"))
        invalid_range = _load_gz_npy(directory / f"invalid_range_ckpt.{n}.gz")
        rows = len(arrays["observation"])
        if arrays["observation"].shape[1:] != (84, 84) or any(len(arrays[k]) != rows for k in DQN_REPLAY_FIELDS):
            raise DatasetError(f"DQN Replay checkpoint {n} in {directory} has inconsistent shapes: "
                               + ", ".join(f"{k}{arrays[k].shape}" for k in DQN_REPLAY_FIELDS))
        for k in DQN_REPLAY_FIELDS:
            parts[k].append(arrays[k])
        parts["valid"].append(dqn_replay_valid(arrays["terminal"], add_count, invalid_range, history) + offset)
        offset += rows
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    if num_actions is None:
        num_actions = int(cat["action"].max()) + 1
    return make_dataset(cat["observation"], cat["action"], cat["reward"], cat["terminal"], cat["valid"],
                        num_actions, history, gamma)


def offline_dataset(env_id: str, *, noise: float, num_transitions: int, seed: int, history: int = 1,
                    data_dir: str | Path | None = None, run: int = 1, checkpoints: Sequence[int] = (0,),
                    progress: bool = True) -> Dataset:
    """The offline dataset of an environment: for ``atari/<Game>`` the DQN Replay files under
    ``data_dir/<Game>/<run>/replay_logs`` (a missing directory is a clear error); for bsuite and
    MinAtar a locally collected one (noise, size and seed as given; cached)."""
    family = validate_env_id(env_id)
    if family == "atari":
        if data_dir is None:
            raise DatasetError(f"{env_id} needs the DQN Replay files: pass --data-dir DIR with "
                               "DIR/<Game>/<run>/replay_logs/$store$_*_ckpt.N.gz")
        game = env_id.split("/", 1)[1]
        return load_dqn_replay(Path(data_dir) / game / str(run) / "replay_logs", checkpoints,
                               num_actions=make_env(env_id, 1, 0).num_actions)
    return collect_dataset(env_id, noise, num_transitions, seed, history, progress=progress)


# ================================================================================================
# 6. Offline trainer: jit(vmap over sweep members)(lax.scan over K gradient steps) per chunk
# ================================================================================================


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    loss: str = "double_dqn"  # one of AGENT_LOSSES
    num_steps: int = 100_000  # gradient steps per member
    chunk_steps: int = 1_000  # steps per compiled call; metrics are taken between chunks
    early_chunk_steps: int = 0  # if > 0, the first chunk is split into chunks this long, so that the
    #                             abrupt early srank collapse (phase 1) is resolved in the curves
    batch_size: int = 32
    gamma: float = 0.99
    optimizer: str = "adam"  # adam | rmsprop
    target_update_period: int = 100
    clip_rewards: bool = False
    probe_size: int = 512  # the paper's rank batch
    dormant_tau: float = 0.025
    eval_every: int = 10_000  # gradient steps between online evaluations (0: never)
    checkpoint_seconds: float = 60.0  # wall time between checkpoints


def chunk_plan(cfg: TrainConfig) -> list[int]:
    """Lengths of the compiled chunks that make up a run (metrics are taken after each)."""
    if cfg.num_steps % cfg.chunk_steps:
        raise ValueError(f"num_steps {cfg.num_steps} must be a multiple of chunk_steps {cfg.chunk_steps}")
    if cfg.eval_every and cfg.eval_every % cfg.chunk_steps:
        raise ValueError(f"eval_every {cfg.eval_every} must be a multiple of chunk_steps {cfg.chunk_steps}")
    plan = [cfg.chunk_steps] * (cfg.num_steps // cfg.chunk_steps)
    if cfg.early_chunk_steps:
        if cfg.chunk_steps % cfg.early_chunk_steps:
            raise ValueError(f"chunk_steps {cfg.chunk_steps} must be a multiple of early_chunk_steps "
                             f"{cfg.early_chunk_steps}")
        plan = [cfg.early_chunk_steps] * (cfg.chunk_steps // cfg.early_chunk_steps) + plan[1:]
    return plan


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a sweep: its seed, learning rate and label for metrics.csv, and the other
    settings that may differ between members of one compiled program (all traced values)."""

    seed: int
    learning_rate: float
    config: str  # e.g. "lr=3e-4"
    data_size: int | None = None  # first data_size entries of the trainer's data order (None: all)
    target_update_period: int | None = None  # None: the TrainConfig's
    sam_rho: float = 0.0  # SAM radius (Foret et al. 2021); 0: plain gradients
    extra_weight: float = 1.0  # weight of the trainer's extra_loss (e.g. CURL's), if one is given


class MemberSettings(NamedTuple):
    """The per-member values of ``Member`` as stacked arrays, an argument of the compiled chunk."""

    data_size: Array
    target_update_period: Array
    sam_rho: Array
    extra_weight: Array


def member_settings(members: Sequence[Member], num_transitions: int, cfg: TrainConfig) -> MemberSettings:
    return MemberSettings(
        data_size=jnp.asarray([m.data_size or num_transitions for m in members], jnp.int32),
        target_update_period=jnp.asarray([m.target_update_period or cfg.target_update_period for m in members],
                                         jnp.int32),
        sam_rho=jnp.asarray([m.sam_rho for m in members], jnp.float32),
        extra_weight=jnp.asarray([m.extra_weight for m in members], jnp.float32),
    )


class TrainState(NamedTuple):
    params: PyTree
    target_params: PyTree
    opt_state: PyTree
    key: Array
    step: Array


def make_optimizer(name: str, learning_rate: float | Array = 0.0) -> optax.GradientTransformation:
    """The optimizer with its learning rate injected as state, so the rate is a traced value: the
    rate given here is what ``init`` stores; ``update`` reads it back from the state."""
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    if name == "rmsprop":  # Dopamine's DQN RMSProp settings, as in tandem DQN
        return optax.inject_hyperparams(optax.rmsprop)(learning_rate=learning_rate, decay=0.95, eps=1e-5,
                                                        centered=True)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or rmsprop")


def init_members(net: nn.Module, sample_obs: Array, members: Sequence[Member], optimizer: str) -> TrainState:
    """Stacked initial states: member m's parameters depend only on its seed, so members that share a
    seed (e.g. the 12 learning rates of one seed) start from the same weights."""
    keys = jnp.stack([jax.random.key_data(jax.random.key(m.seed)) for m in members])
    lrs = jnp.asarray([m.learning_rate for m in members], jnp.float32)
    return _init_fn(net, optimizer)(jnp.asarray(sample_obs), keys, lrs)


@functools.lru_cache(maxsize=32)  # compiled once per (network, optimizer), not once per run
def _init_fn(net: nn.Module, optimizer: str) -> Callable:
    def init_one(sample_obs, key_data, lr):
        init_key, train_key = jax.random.split(jax.random.wrap_key_data(key_data))
        params = net.init(init_key, sample_obs)
        opt_state = make_optimizer(optimizer, lr).init(params)
        return TrainState(params, params, opt_state, train_key, jnp.zeros((), jnp.int32))

    # per_member, not vmap: the LSTM's orthogonal initialiser is a QR (see per_member).
    return jax.jit(lambda sample_obs, keys, lrs: per_member(functools.partial(init_one, sample_obs))(keys, lrs))


def initial_params(net: nn.Module, sample_obs: Array, seeds: Sequence[int]) -> PyTree:
    """Stacked initial parameters of members with these seeds (the weights a run started from),
    drawn by ``init_members`` itself so the two can never disagree."""
    return init_members(net, sample_obs, [Member(s, 0.0, "") for s in seeds], "adam").params


def learner_step(net: nn.Module, opt: optax.GradientTransformation, state: TrainState, batch: Batch, *,
                 loss: str, gamma: float, target_update_period: int | Array, clip_rewards: bool = False,
                 extra_loss: Callable | None = None, extra_weight: float | Array = 1.0,
                 sam_rho: float | Array | None = None, key: Array | None = None) -> tuple[TrainState, Array, Array]:
    """One gradient step of one agent on one batch: the ``loss`` of ``agent_loss``, plus
    ``extra_weight * extra_loss(params, features, target_params, batch, key)`` if given (``features``:
    the online network's differentiable features of ``batch.obs``), an optimizer update, and a copy
    of the online parameters into the target every ``target_update_period`` steps.

    With ``sam_rho`` (None compiles plain gradients) the gradient is SAM's (Foret et al. 2021): the
    gradient at the worst-case point ``params + rho * g / ||g||`` of the first-order neighbourhood;
    rho = 0 gives the plain gradient (at twice the cost). ``state.key`` is passed through untouched.
    Returns (new state, loss, mean Q). The offline trainer and the online tandem agents
    (exp_tandem.py) share it."""

    def loss_fn(params):
        value, aux = agent_loss(loss, net.apply, params, state.target_params, batch, gamma, clip_rewards)
        if extra_loss is not None:
            value = value + extra_weight * extra_loss(params, aux["features"], state.target_params, batch, key)
        return value, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (value, aux), grads = grad_fn(state.params)
    if sam_rho is not None:
        grads = sam_gradient(lambda p: grad_fn(p)[1], state.params, grads, sam_rho)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_count = state.step + 1
    target = optax.periodic_update(params, state.target_params, step_count, target_update_period)
    return TrainState(params, target, opt_state, state.key, step_count), value, aux["q_mean"]


def sam_gradient(grad_fn: Callable[[PyTree], PyTree], params: PyTree, grads: PyTree, rho: float | Array) -> PyTree:
    """Sharpness-aware gradient (Foret et al. 2021, their eq. 2 with p = 2): ``grad_fn`` evaluated at
    ``params + rho * grads / ||grads||``, the steepest-ascent point at distance rho. Pure; the
    norm is global over all parameters, as in the paper."""
    scale = rho / (optax.global_norm(grads) + 1e-12)
    return grad_fn(jax.tree_util.tree_map(lambda p, g: p + scale * g, params, grads))


@functools.lru_cache(maxsize=32)  # one compiled program per (network, config): reruns skip the compile
def make_chunk_fn(net: nn.Module, cfg: TrainConfig, steps: int,
                  extra_loss: Callable | None = None, sam: bool = False) -> Callable:
    """Compiled function ``(states, dataset, order, settings) -> (states, mean_loss, mean_q)``, running
    ``steps`` gradient steps for every member at once (``settings``: their ``MemberSettings``).
    Minibatch rows are drawn on device from ``order[:data_size]`` (the member's share of the data),
    so the dataset never leaves the device. ``sam`` compiles SAM gradients (each member's radius
    is its setting)."""
    opt = make_optimizer(cfg.optimizer)

    def member_chunk(state: TrainState, ds: Dataset, order: Array, settings: MemberSettings):
        # All of the chunk's minibatch positions in one call: one large threefry call is far cheaper
        # on a CPU than `steps` small ones inside the loop.
        key, sample_key, loss_key = jax.random.split(state.key, 3)
        positions = jax.random.randint(sample_key, (steps, cfg.batch_size), 0, settings.data_size)
        loss_keys = jax.random.split(loss_key, steps)

        def step(state: TrainState, xs):
            pos, step_key = xs
            state, loss, q_mean = learner_step(net, opt, state, ds.batch(order[pos]), loss=cfg.loss, gamma=cfg.gamma,
                                               target_update_period=settings.target_update_period,
                                               clip_rewards=cfg.clip_rewards, extra_loss=extra_loss,
                                               extra_weight=settings.extra_weight,
                                               sam_rho=settings.sam_rho if sam else None, key=step_key)
            return state, (loss, q_mean)

        state, (loss, q) = jax.lax.scan(step, state, (positions, loss_keys))
        return state._replace(key=key), jnp.mean(loss), jnp.mean(q)

    return jax.jit(jax.vmap(member_chunk, in_axes=(0, None, None, 0)), donate_argnums=0)


@functools.lru_cache(maxsize=32)
def make_probe_fn(net: nn.Module, tau: float) -> Callable:
    """Compiled ``(params, probe_obs) -> dict of per-member metrics`` on the fixed probe batch."""

    def probe_one(params, obs):
        q, features = net.apply(params, obs)
        return {"srank": effective_rank(features), "dead_units": dead_units(features),
                "dormant_frac": dormant_fraction(features, tau), "q_probe": jnp.mean(q)}

    # per_member, not vmap: srank is an SVD (see per_member).
    return jax.jit(lambda params, obs: per_member(lambda p: probe_one(p, obs))(params))


def probe_rows(ds: Dataset, size: int, seed: int = 0) -> np.ndarray:
    """The fixed probe batch (512 states in the paper), the same for every member and checkpoint."""
    rng = np.random.default_rng(seed)
    valid = np.asarray(ds.valid)
    return valid[rng.choice(len(valid), size=min(size, len(valid)), replace=False)]


def member_sharding(num_members: int):
    """Shards the sweep axis over all local devices when it divides evenly (one GPU or a CPU: a
    no-op). Multi-host: call ``jax.distributed.initialize()`` first; the mesh then spans every host."""
    devices = jax.devices()
    if len(devices) == 1 or num_members % len(devices):
        return None
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    rows: list[dict]  # tidy metrics rows
    diverged: dict[int, int]  # member index -> step at which it diverged


def _checkpoint_id(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train_offline(
    net: nn.Module, ds: Dataset, cfg: TrainConfig, members: Sequence[Member], *, env_id: str, agent: str,
    order: np.ndarray | None = None, evaluate_fn: Callable[[PyTree], np.ndarray] | None = None,
    checkpoint_dir: Path | None = None, extra_loss: Callable | None = None, progress: bool = True,
    run_name: str = "",
) -> TrainResult:
    """Trains every member on ``ds`` with the loss of ``cfg`` and records metrics after every chunk.

    Rows (env, agent, config, seed, step, metric, value): loss, q_mean, srank, dead_units,
    dormant_frac, q_probe after every chunk; return at every ``eval_every`` steps (``evaluate_fn``
    maps stacked params to per-member mean returns). A member whose loss or parameters become
    non-finite is reported once and its later rows carry NaN; the others go on. With a
    ``checkpoint_dir`` the run resumes from its last checkpoint, and a finished run is not redone
    (the checkpoint is keyed by ``run_name``, the config and the members, not by ``extra_loss``:
    give runs with different extra losses different run names).

    ``extra_loss(params, features, target_params, batch, key)`` is added to every step's loss with
    each member's ``extra_weight``; any member with ``sam_rho`` > 0 compiles SAM gradients for all.
    """
    from tqdm.auto import tqdm

    plan = chunk_plan(cfg)
    order = np.asarray(ds.valid) if order is None else np.asarray(order)
    settings = member_settings(members, len(order), cfg)
    order = jnp.asarray(order, jnp.int32)
    probe = ds.stacked_obs(jnp.asarray(probe_rows(ds, cfg.probe_size)))
    state = init_members(net, probe[:1], members, cfg.optimizer)
    sharding = member_sharding(len(members))
    if sharding is not None:
        state, settings = jax.device_put((state, settings), sharding)
    use_sam = any(m.sam_rho > 0 for m in members)  # members without SAM in a SAM program pay for it
    chunk_fns = {n: make_chunk_fn(net, cfg, n, extra_loss, use_sam) for n in set(plan)}
    probe_fn = make_probe_fn(net, cfg.dormant_tau)

    rows: list[dict] = []
    diverged: dict[int, int] = {}
    start_chunk = 0
    ckpt = None
    if checkpoint_dir is not None:
        ident = _checkpoint_id(run_name, env_id, agent, dataclasses.asdict(cfg), [dataclasses.asdict(m) for m in members],
                               len(ds), int(np.asarray(order).sum()), net.__class__.__name__, repr(net))
        ckpt = Path(checkpoint_dir) / f"{agent}_{env_id.replace('/', '_')}_{ident}.npz"
        if ckpt.exists():
            state, rows, diverged, start_chunk = _load_checkpoint(ckpt, state)
    num_chunks = len(plan)
    ends = np.cumsum(plan)

    def record(step: int, metric: str, values) -> None:
        values = np.asarray(values, np.float64)
        for m, member in enumerate(members):
            v = np.nan if m in diverged and metric != "diverged" else float(values[m])
            rows.append({"env": env_id, "agent": agent, "config": member.config, "seed": member.seed,
                         "step": step, "metric": metric, "value": v})

    def evaluate(step: int) -> None:
        if evaluate_fn is not None:
            record(step, "return", evaluate_fn(state.params))

    if start_chunk == 0:
        for name, v in probe_fn(state.params, probe).items():
            record(0, name, v)
        if cfg.eval_every:
            evaluate(0)
    last_save = time.time()
    bar = tqdm(range(start_chunk, num_chunks), initial=start_chunk, total=num_chunks, disable=not progress,
               desc=f"{agent} {env_id}", unit="chunk", dynamic_ncols=True)
    for chunk in bar:
        state, loss, q_mean = chunk_fns[plan[chunk]](state, ds, order, settings)
        step = int(ends[chunk])
        metrics = probe_fn(state.params, probe)
        finite = np.isfinite(np.asarray(loss)) & _params_finite(state.params)
        for m in np.flatnonzero(~finite):
            if m not in diverged:
                diverged[int(m)] = step
                tqdm.write(f"warning: member {m} ({members[m].config}, seed {members[m].seed}) diverged "
                          f"(non-finite loss or parameters) by step {step}; its later metrics are NaN", file=sys.stderr)
        record(step, "loss", loss)
        record(step, "q_mean", q_mean)
        for name, v in metrics.items():
            record(step, name, v)
        if cfg.eval_every and step % cfg.eval_every == 0:
            evaluate(step)
        alive = [m for m in range(len(members)) if m not in diverged]
        if alive:
            bar.set_postfix(srank=f"{np.mean(np.asarray(metrics['srank'])[alive]):.1f}",
                            loss=f"{np.nanmean(np.asarray(loss)[alive]):.3g}", refresh=False)
        if ckpt is not None and (time.time() - last_save > cfg.checkpoint_seconds or chunk + 1 == num_chunks):
            _save_checkpoint(ckpt, state, rows, diverged, chunk + 1)
            last_save = time.time()
    bar.close()
    for m, step in sorted(diverged.items()):
        rows.append({"env": env_id, "agent": agent, "config": members[m].config, "seed": members[m].seed,
                     "step": step, "metric": "diverged", "value": 1.0})
    return TrainResult(state, rows, diverged)


def _params_finite(params: PyTree) -> np.ndarray:
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree_util.tree_leaves(params)]
    return np.asarray(jnp.all(jnp.stack(leaves), axis=0))


def _save_checkpoint(path: Path, state: TrainState, rows, diverged, chunks_done: int) -> None:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state))
    meta = json.dumps({"rows": rows, "diverged": diverged, "chunks_done": chunks_done})
    arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    _atomic_write(path, lambda f: np.savez(f, meta=np.asarray(meta), **arrays), ".npz")


def _load_checkpoint(path: Path, like: TrainState):
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            plain = jax.tree_util.tree_map(
                lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, like)
            leaves, treedef = jax.tree_util.tree_flatten(plain)
            loaded = [jnp.asarray(f[f"leaf_{i}"], dtype=x.dtype) for i, x in enumerate(leaves)]
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        print(f"warning: checkpoint {path} is unreadable ({e}); starting over", file=sys.stderr)
        return like, [], {}, 0
    state = jax.tree_util.tree_unflatten(treedef, loaded)
    state = state._replace(key=jax.random.wrap_key_data(state.key))
    print(f"resuming from {path} ({meta['chunks_done']} chunks done)", file=sys.stderr)
    return state, meta["rows"], {int(k): v for k, v in meta["diverged"].items()}, meta["chunks_done"]


def unstack(tree: PyTree, i: int) -> PyTree:
    """Member ``i`` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[i], tree)


# ================================================================================================
# 7. Evaluation
# ================================================================================================


def evaluate_policies(
    net: nn.Module, params: PyTree, env_id: str, num_episodes: int, seed: int, *, epsilon: float = 0.0,
    obs_transform: Callable[[Array, Array], Array] | None = None, history: int = 1, max_steps: int = 27_000,
) -> np.ndarray:
    """Plays ``num_episodes`` episodes for every member of the stacked ``params`` at once (one env
    per member and episode) and returns the (members, episodes) undiscounted returns.

    Actions are greedy on Q (or logits) with probability 1 - epsilon. ``obs_transform(key, obs)``
    perturbs observations before the network sees them (the robustness study); ``history`` > 1
    feeds the last ``history`` observations (zero before the episode start) to recurrent agents.
    """
    members = jax.tree_util.tree_leaves(params)[0].shape[0]
    env = make_env(env_id, members * num_episodes, seed)
    key = jax.random.key(seed)
    act = _act_fn(net, members, num_episodes, epsilon, obs_transform)

    obs = env.reset()
    stack = HistoryStack(obs, history) if history > 1 and env.frames_stacked == 1 else None
    net_obs = stack.buffer if stack else obs
    returns = np.zeros(env.num_envs)
    running = np.ones(env.num_envs, bool)
    for _ in range(max_steps):
        key, step_key = jax.random.split(key)
        obs, reward, terminated, truncated = env.step(np.asarray(act(params, net_obs, step_key)))
        returns += reward * running
        running &= ~(terminated | truncated)
        if not running.any():
            break
        net_obs = stack.push(obs, terminated | truncated) if stack else obs
    env.close()
    return returns.reshape(members, num_episodes)


@functools.lru_cache(maxsize=64)  # repeated evaluations of a run reuse one compiled policy
def _act_fn(net: nn.Module, members: int, num_episodes: int, epsilon: float, obs_transform: Callable | None):
    @jax.jit
    def act(params, obs, key):
        transform_key, explore_key, random_key = jax.random.split(key, 3)
        if obs_transform is not None:
            obs = obs_transform(transform_key, obs)
        obs = obs.reshape(members, num_episodes, *obs.shape[1:])
        q = jax.vmap(lambda p, o: net.apply(p, o)[0])(params, obs).reshape(members * num_episodes, -1)
        greedy = jnp.argmax(q, axis=-1)
        explore = jax.random.uniform(explore_key, greedy.shape) < epsilon
        return jnp.where(explore, jax.random.randint(random_key, greedy.shape, 0, q.shape[-1]), greedy)

    return act


# ---- observation perturbations: jitted, batched, applied through evaluate_policies' hook ---------


def image_axes(env_id: str) -> tuple[int, int]:
    """Image axes of a batch of observations: stacked Atari frames (N, 4, 84, 84) are NCHW; MinAtar
    (N, 10, 10, C) is NHWC."""
    return (2, 3) if env_id.startswith("atari/") else (1, 2)


def random_shift(key: Array, obs: Array, pad: int, axes: tuple[int, int] = (1, 2)) -> Array:
    """DrQ's random shift (Yarats et al. 2020): pad each image by ``pad`` pixels replicating its edges,
    then crop a random window of the original size. Per-sample offsets; shape and dtype kept;
    the identity when pad is 0."""
    if pad == 0:
        return obs
    widths = [(0, 0)] * obs.ndim
    for a in axes:
        widths[a] = (pad, pad)
    padded = jnp.pad(obs, widths, mode="edge")
    offsets = jax.random.randint(key, (obs.shape[0], 2), 0, 2 * pad + 1)

    def crop(image, offset):
        start = [0] * image.ndim
        start[axes[0] - 1], start[axes[1] - 1] = offset[0], offset[1]
        return jax.lax.dynamic_slice(image, start, obs.shape[1:])

    return jax.vmap(crop)(padded, offsets)


def random_scale(key: Array, obs: Array, strength: float, axes: tuple[int, int] = (1, 2)) -> Array:
    """Random scaling (as in Chen et al. 2017's augmentation): zoom each image by a factor drawn
    uniformly from [1 - strength, 1 + strength] about its centre, resampled bilinearly onto the
    original grid (zooming in crops; zooming out fills the border with zeros, MinAtar's empty
    cell). Shape and dtype kept (integer images are rounded back); the identity when strength is
    0. On a 10x10 grid a factor changes pixels only once it moves the border by about half a cell."""
    if strength == 0:
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


# ================================================================================================
# 8. Results, presets, CLI and plotting style
# ================================================================================================

METRIC_COLUMNS = ("env", "agent", "config", "seed", "step", "metric", "value")


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    statistic: str
    value: Any
    held: bool | None  # None: could not be evaluated at this scale


def write_metrics(out: Path, rows: Iterable[dict]) -> Path:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(out) / "metrics.csv"
    _atomic_write(path, lambda f: f.write(buf.getvalue().encode()), ".csv")
    return path


class Metrics:
    """metrics.csv in memory, with the selections plots need."""

    def __init__(self, path: Path):
        import csv

        if not Path(path).exists():
            raise DatasetError(f"{path} does not exist: run the script without --plot-only first")
        with open(path) as f:
            self.rows = [dict(r, seed=int(r["seed"]), step=int(r["step"]), value=float(r["value"]))
                         for r in csv.DictReader(f)]
        self._cache: dict[tuple, list[dict]] = {}

    def values(self, key: str, **where) -> list:
        """Distinct values of column ``key`` among the rows matching ``where``, in first-seen order."""
        return list(dict.fromkeys(r[key] for r in self.select(**where)))

    def select(self, **where) -> list[dict]:
        key = tuple(sorted(where.items()))
        if key not in self._cache:  # plots ask for the same selections many times
            self._cache[key] = [r for r in self.rows if all(r[k] == v for k, v in where.items())]
        return self._cache[key]

    def curves(self, **where) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values[seed, step]) for rows matching ``where`` (which should fix env, agent,
        config and metric); a missing point is NaN."""
        rows = self.select(**where)
        steps = np.asarray(sorted({r["step"] for r in rows}))
        seeds = sorted({r["seed"] for r in rows})
        grid = np.full((len(seeds), len(steps)), np.nan)
        si, ti = {s: i for i, s in enumerate(seeds)}, {t: i for i, t in enumerate(steps)}
        for r in rows:
            grid[si[r["seed"]], ti[r["step"]]] = r["value"]
        return steps, grid

    def at_step(self, step: int, **where) -> np.ndarray:
        """The per-seed values at ``step`` of the rows matching ``where`` (NaN where missing)."""
        steps, grid = self.curves(**where)
        hit = np.flatnonzero(steps == step)
        return grid[:, hit[0]] if len(hit) else np.full(grid.shape[0], np.nan)

    def final(self, **where) -> np.ndarray:
        """The per-seed value at the last step of the matching rows."""
        _, grid = self.curves(**where)
        return grid[:, -1]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_meta(out: Path, args: Any, config: Any, wall_seconds: float, extra: dict | None = None) -> None:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    meta = {
        "argv": sys.argv, "args": _jsonable(args), "config": _jsonable(config), "git_commit": git_commit(),
        "wall_seconds": round(wall_seconds, 1), "device": str(jax.devices()[0]), "num_devices": jax.device_count(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "bsuite", "minatar", "ale-py")},
        **(extra or {}),
    }
    (Path(out) / "meta.json").write_text(json.dumps(meta, indent=2))


def write_claims(out: Path, claims: Sequence[Claim]) -> None:
    (Path(out) / "claims.json").write_text(json.dumps([_jsonable(c) for c in claims], indent=2))
    for c in claims:
        status = {True: "HELD", False: "NOT HELD", None: "N/A"}[c.held]
        print(f"[{status:8s}] {c.id}: {c.claim}  ({c.statistic} = {c.value})")


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def resolve_preset(args: Any, presets: dict[str, Any]) -> Any:
    """The preset named by ``args.preset`` with every field the user set on the command line (any
    ``args`` field that is not None and exists in the config) replacing the preset's value."""
    base = presets[args.preset]
    names = {f.name for f in dataclasses.fields(base)}
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)
                 if f.name in names and getattr(args, f.name) is not None}
    return dataclasses.replace(base, **overrides)


def cli(args_type: type, main: Callable[[Any], None], description: str | None = None) -> None:
    """Parses ``args_type`` with tyro and runs ``main``; a bad environment id, a bad dataset or a bad
    argument becomes a one-line error and exit code 2, an interrupt exits 130 (checkpoints kept)."""
    import tyro

    args = tyro.cli(args_type, description=description)
    try:
        main(args)
    except (ValueError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted: finished chunks are checkpointed; run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None


@dataclasses.dataclass(frozen=True)
class StudyArgs:
    """Options every experiment script takes; each script's ``Args`` adds its own knobs."""

    preset: Literal["smoke", "cpu", "paper"] = "cpu"
    """smoke: seconds, for the tests; cpu: 6 to 20 min on 2 CPU cores with datasets made locally;
    paper: the paper's protocol and hyperparameters (meant for a GPU; Atari data from --data-dir)."""
    env: tuple[str, ...] | None = None
    """Environment ids (bsuite/<game>, minatar/<game>, atari/<Game>); default: the preset's."""
    seeds: int | None = None
    """Seeds per configuration; default: the preset's."""
    out: Path | None = None
    """Output directory for metrics.csv, meta.json, claims.json, figures, checkpoints; default: results/<script>/."""
    plot_only: bool = False
    """Redraw the figures and claims from an existing metrics.csv without training."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OfflineStudyConfig:
    """Settings every offline study shares (a script's Config extends it): what to train on, for
    how long, how often to evaluate, and the dataset to make or load."""

    env: tuple[str, ...]
    seeds: int
    num_steps: int  # gradient steps per run
    chunk_steps: int  # gradient steps per compiled call (metrics are taken between chunks)
    early_chunk_steps: int = 0  # finer chunks over the first chunk (resolves the early collapse)
    eval_every: int
    eval_episodes: int
    batch_size: int
    target_update_period: int
    dataset_noise: float  # bsuite/MinAtar collection: probability of a random action
    dataset_size: int  # bsuite/MinAtar collection: transitions
    data_dir: str | None = None  # Atari: the DQN Replay root
    replay_checkpoints: tuple[int, ...] = (0,)  # Atari: which DQN Replay checkpoints to load

    def train_config(self, loss: str = "double_dqn") -> TrainConfig:
        return TrainConfig(loss=loss, num_steps=self.num_steps, chunk_steps=self.chunk_steps,
                           early_chunk_steps=self.early_chunk_steps, batch_size=self.batch_size,
                           target_update_period=self.target_update_period, eval_every=self.eval_every,
                           clip_rewards=all(e.startswith("atari/") for e in self.env))

    def dataset(self, env_id: str) -> Dataset:
        return offline_dataset(env_id, noise=self.dataset_noise, num_transitions=self.dataset_size, seed=0,
                               data_dir=self.data_dir, checkpoints=self.replay_checkpoints)

    def evaluator(self, net: nn.Module, env_id: str) -> Callable[[PyTree], np.ndarray]:
        """Stacked params -> each member's mean return over ``eval_episodes`` greedy episodes."""
        return lambda params: evaluate_policies(net, params, env_id, self.eval_episodes, seed=10_000).mean(axis=1)


def run_study(args: Any, presets: dict[str, Any], *, run: Callable, claims: Callable, plot: Callable) -> None:
    """The flow every script's main() shares: resolve the preset, train and write metrics.csv
    (``run(config, out)``, which may return extra meta.json fields) unless ``--plot-only``, then
    compute ``claims(metrics, config)`` and draw ``plot(metrics, config, out)`` from metrics.csv."""
    config = resolve_preset(args, presets)
    script = Path(sys.modules[type(args).__module__].__file__).stem
    out = Path(args.out) if args.out is not None else Path("results") / script
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if not args.plot_only:
        extra = run(config, out)
        write_meta(out, args, config, time.time() - start, extra)
    metrics = Metrics(out / "metrics.csv")
    write_claims(out, claims(metrics, config))
    plot(metrics, config, out)
    print(f"wrote {out}/ in {time.time() - start:.0f} s")


def check_env_ids(env_ids: Iterable[str]) -> None:
    for env_id in env_ids:
        validate_env_id(env_id)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN pairs are dropped."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    return pearson(_average_ranks(x[keep]), _average_ranks(y[keep]))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation; NaN when either side is constant or fewer than 2 finite pairs."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denom) if len(x) > 1 and denom > 0 else float("nan")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two orderings (ties in either count as neither concordant nor
    discordant); NaN pairs are dropped, NaN if either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = np.sqrt(np.sum(dx != 0) * np.sum(dy != 0))
    return float(np.sum(dx * dy) / denom) if denom > 0 else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):  # ties share the mean of their ranks
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


# ---- plotting style: seed mean with a standard-error band ---------------------------------------


def plot_setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.alpha": 0.3, "font.size": 9, "legend.fontsize": 7,
                         "axes.titlesize": 10})
    return plt


def mean_and_stderr(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds and its standard error (0 where there is one seed), ignoring NaN."""
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
        mean = np.nanmean(values, axis=axis)
        n = np.sum(np.isfinite(values), axis=axis)
        std = np.nanstd(values, axis=axis, ddof=1) if values.shape[axis] > 1 else np.zeros_like(mean)
        err = np.where(n > 1, std / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, err


@contextlib.contextmanager
def _quiet_nan_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def plot_band(ax, x: np.ndarray, values: np.ndarray, label: str | None = None, color=None, **kw) -> None:
    """Seed mean as a line, +- one standard error as a shaded band; values is (seeds, len(x))."""
    mean, err = mean_and_stderr(values)
    (line,) = ax.plot(x, mean, label=label, color=color, lw=1.4, **kw)
    ax.fill_between(x, mean - err, mean + err, color=line.get_color(), alpha=0.2, lw=0)


def save_figure(fig, out: Path, name: str) -> list[Path]:
    """Saves ``name``.png and ``name``.pdf under ``out``."""
    paths = [Path(out) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=130 if p.suffix == ".png" else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def seeds_note(metrics: Metrics, **where) -> str:
    n = len(metrics.values("seed", **where))
    return f"mean of {n} seed{'s' if n != 1 else ''}, band = standard error"

"""Shared core of the reproduction of "An empirical study of implicit regularization in deep
offline RL" (Gulcehre et al., TMLR 2022).

Every experiment script imports this module and nothing else of the repo. A run flows one way:

    environment --> dataset --> offline trainer --> probe + evaluation --> metrics.csv --> claims, figures
    (section 4)     (5)         (8; learner: 6)     (1, 9)                  (10)           (11, 12, 13)

and the tandem study's online agents (section 7) share the learner step (section 6) with the
offline trainer. Sections:

   1. Rank metrics       effective_rank (srank), dead_units, dormant_fraction, per_member
   2. Networks           MLP, MinAtarCNN, NatureCNN, RecurrentQNetwork -> (q or logits, features)
   3. Losses             pure TD / BC errors, and the trainer's loss objects (DoubleDQN, BVE, ...)
   4. Environments       make_env: one batched numpy interface over bsuite, MinAtar and ALE
   5. Datasets           Dataset, returns_to_go, collect_dataset (local, cached), load_dqn_replay
   6. Learner            TrainState, optimizers, init_learners, learner_step
   7. Online DQN         device replay ring, episode queue, the jitted acting-and-learning step, loop
   8. Offline trainer    jit(vmap over members)(lax.scan over K steps) per chunk
   9. Evaluation         every member's episodes at once in batched environments
  10. Results            Recorder (rows, divergence, checkpoints), metrics.csv, Metrics, meta.json
  11. Claims             the claim record written to claims.json
  12. CLI                one frozen config per script, presets, validation, --plot-only
  13. Plotting           seed mean with a standard-error band

Importing this module changes no global JAX setting.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
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
from typing import Annotated, Any, Callable, Iterable, Literal, Mapping, NamedTuple, Protocol, Sequence

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

# ---- seed streams: one named constant per use of randomness -------------------------------------
# Training seeds are the members' own (0, 1, ...). Everything else a run draws comes from one of
# these, so two uses never share a stream by accident and a reader can find every one.
DATA_SEED = 0  # the locally collected datasets (the behaviour agent and its environments)
PROBE_SEED = 0  # which dataset rows form the fixed probe batch of 512 states
SUBSAMPLE_SEED = 0  # the order of a dataset's transitions whose prefixes are its subsets
EVAL_SEED = 10_000  # evaluation environments and the evaluation policy's exploration
PERTURBED_EVAL_SEED = 20_000  # evaluation under observation perturbations (the robustness study)
REFERENCE_SEED = 20_000  # the uniformly random policy that anchors normalised returns
RANDOM_PROBE_SEED = 12_345  # the states a random policy visits (the tandem study's probe batch)
FORK_ENV_SEED = 5_000  # the environments of the forked-tandem program

DORMANT_TAU = 0.025  # Sokar et al. (2023)'s threshold for tau-dormant units


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


def dormant_fraction(features: Array, tau: float = DORMANT_TAU) -> Array:
    """Fraction of tau-dormant units (Sokar et al. 2023): a unit's mean |activation| over the batch,
    divided by the mean of that over the layer, is <= tau. An all-zero layer is fully dormant."""
    score = jnp.mean(jnp.abs(features), axis=0)
    normalised = score / jnp.maximum(jnp.mean(score), 1e-12)
    return jnp.mean(normalised <= tau)


@functools.lru_cache(maxsize=32)
def make_probe_fn(net: nn.Module, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """Compiled ``(stacked params, probe_obs) -> {metric: (members,)}`` on the fixed probe batch:
    srank, dead units and the dormant fraction of the penultimate layer, and the mean Q value.
    With a ``mesh`` (members sharded over its "members" axis) each device probes its own members."""

    def probe_one(params, obs):
        q, features = net.apply(params, obs)
        return {"srank": effective_rank(features), "dead_units": dead_units(features),
                "dormant_frac": dormant_fraction(features), "q_probe": jnp.mean(q),
                "units": jnp.asarray(features.shape[-1], jnp.int32)}

    # per_member, not vmap: srank is an SVD (see per_member).
    probe_all = lambda params, obs: per_member(lambda p: probe_one(p, obs))(params)
    if mesh is not None:
        # Explicitly per device: left to the partitioner, a loop over a sharded axis gathers every
        # member onto every device first (an all-gather, and each device probing all members).
        spec = jax.sharding.PartitionSpec
        probe_all = jax.shard_map(probe_all, mesh=mesh, in_specs=(spec("members"), spec()), out_specs=spec("members"),
                                  check_vma=False)  # a network's own scan (the LSTM) starts from unsharded constants
    return jax.jit(probe_all)


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
Activation = Literal["relu", "tanh", "elu", "gelu", "swish", "leaky_relu"]

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
    ``net.apply(params, obs, mutable=["intermediates"])``. ``encode`` is the first hidden layer's
    output (an auxiliary loss's view of the input; networks with a torso encode with the torso)."""

    num_actions: int
    hidden: Sequence[int] = (64, 64)
    activation: str = "relu"
    init_scheme: str = "lecun"  # lecun (flax default) or he

    def setup(self):
        self.layers = [nn.Dense(w, kernel_init=INITS[self.init_scheme], name=f"hidden_{i}")
                       for i, w in enumerate(self.hidden)]
        self.head = nn.Dense(self.num_actions, kernel_init=INITS[self.init_scheme], name="head")

    def encode(self, obs: Array) -> Array:
        return activation_fn(self.activation)(self.layers[0](obs.reshape(obs.shape[0], -1).astype(jnp.float32)))

    def __call__(self, obs: Array) -> tuple[Array, Array]:
        x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        act = activation_fn(self.activation)
        for i, layer in enumerate(self.layers):
            x = act(layer(x))
            self.sow("intermediates", f"features_{i}", x)
        return self.head(x), x


class PatchConv(nn.Module):
    """A stride-1 VALID convolution written as one matrix product of image patches (im2col).

    Same parameters (kernel (kh, kw, C, F), bias (F,)) and same result as ``nn.Conv(F, (kh, kw),
    padding="VALID")``; on a CPU, for MinAtar's 10x10 inputs, one (batch*64, 9C) x (9C, F) matmul
    is 1.5-2.7x faster than XLA's generic convolution (``make bench``: 2.74x on an Intel 2-core
    machine, 1.47x on an AMD EPYC), which is what makes the MinAtar presets fit on a laptop."""

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
    """MinAtar network of Young & Tian (2019): Conv(16, 3x3, stride 1, valid) -> 128 hidden.
    ``encode`` is the convolution's (flattened) output."""

    num_actions: int
    activation: str = "relu"
    hidden: int = 128

    def setup(self):
        self.conv = PatchConv(16, (3, 3))
        self.Dense_0 = nn.Dense(self.hidden)
        self.Dense_1 = nn.Dense(self.num_actions)

    def encode(self, obs: Array) -> Array:
        x = activation_fn(self.activation)(self.conv(obs.astype(jnp.float32)))
        return x.reshape(x.shape[0], -1)

    def __call__(self, obs: Array) -> tuple[Array, Array]:
        x = activation_fn(self.activation)(self.Dense_0(self.encode(obs)))
        return self.Dense_1(x), x


class NatureCNN(nn.Module):
    """Atari torso of Appendix A.12 (Conv 32x8x8/4, 64x4x4/2, 64x3x3/1) and one 512-unit layer.
    Takes stacked uint8 frames (batch, 4, 84, 84), as the ALE vector env and the dataset give them.
    ``encode`` is the torso's (flattened) output."""

    num_actions: int
    activation: str = "relu"
    hidden: int = 512

    def setup(self):
        self.Conv_0 = nn.Conv(32, (8, 8), strides=4, padding="VALID")
        self.Conv_1 = nn.Conv(64, (4, 4), strides=2, padding="VALID")
        self.Conv_2 = nn.Conv(64, (3, 3), strides=1, padding="VALID")
        self.Dense_0 = nn.Dense(self.hidden)
        self.Dense_1 = nn.Dense(self.num_actions)

    def encode(self, obs: Array) -> Array:
        act = activation_fn(self.activation)
        x = jnp.transpose(obs, (0, 2, 3, 1)).astype(jnp.float32) / 255.0  # NCHW frames -> NHWC
        x = act(self.Conv_2(act(self.Conv_1(act(self.Conv_0(x))))))
        return x.reshape(x.shape[0], -1)

    def __call__(self, obs: Array) -> tuple[Array, Array]:
        x = activation_fn(self.activation)(self.Dense_0(self.encode(obs)))
        return self.Dense_1(x), x


class RecurrentQNetwork(nn.Module):
    """LSTM core over an observation history (batch, time, ...); the features are the LSTM's output
    at the last step. ``cell_activation`` replaces the LSTM's tanh (on the cell input and on the
    cell state before the output gate), as in the paper's Section 6 ablation. ``encode`` is the
    LSTM's outputs averaged over the time steps (the paper's CURL on DeepMind Lab). The
    memory-task stand-ins for DeepMind Lab (the activation and the interventions studies) use it."""

    num_actions: int
    hidden: int = 64
    cell_activation: str = "tanh"

    def setup(self):
        self.OptimizedLSTMCell_0 = nn.OptimizedLSTMCell(self.hidden, activation_fn=activation_fn(self.cell_activation))
        self.rnn = nn.RNN(self.OptimizedLSTMCell_0)
        self.Dense_0 = nn.Dense(self.num_actions)

    def outputs(self, obs: Array) -> Array:
        return self.rnn(obs.reshape(obs.shape[0], obs.shape[1], -1).astype(jnp.float32))

    def encode(self, obs: Array) -> Array:
        return jnp.mean(self.outputs(obs), axis=1)

    def __call__(self, obs: Array) -> tuple[Array, Array]:
        features = self.outputs(obs)[:, -1]
        return self.Dense_0(features), features


def default_network(env_id: str, num_actions: int, activation: str = "relu") -> nn.Module:
    """The paper's network for an environment family (Appendix A.12; MinAtar's own for MinAtar):
    bsuite a 2x64 MLP, MinAtar the MinAtar CNN, Atari the Nature CNN with one 512-unit layer."""
    family = env_id.split("/")[0]
    if family == "bsuite":
        return MLP(num_actions, (64, 64), activation)
    if family == "minatar":
        return MinAtarCNN(num_actions, activation)
    if family == "atari":
        return NatureCNN(num_actions, activation)
    raise ValueError(f"no default network for {env_id!r}")


# ================================================================================================
# 3. Losses: pure functions on batched arrays (Dopamine / rlax conventions), and the loss objects
#    the trainers take
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


class Loss(Protocol):
    """What a trainer takes: ``loss(apply, params, target_params, batch, settings, key, loss_state)
    -> (value, aux)``. ``apply`` is the network's apply function, ``settings`` the member's traced
    settings (a dict of scalars), ``key`` a fresh PRNG key per step. ``aux`` holds ``q_mean`` and
    the online network's ``features`` of ``batch.obs`` (still differentiable, so an auxiliary loss
    built on them trains the same forward pass). Gradients flow only into ``params``.

    A loss that keeps state between steps (CURL's momentum key encoder) defines
    ``init_state(params)`` and returns the next state as ``aux["loss_state"]``; the trainer keeps it
    in ``TrainState.loss_state`` and knows nothing else of it.

    Losses are frozen dataclasses: their repr names every setting, they hash (compiled programs
    are cached per loss), and two runs with equal losses compute the same thing."""

    def __call__(self, apply: Callable, params: PyTree, target_params: PyTree, batch: Batch,
                 settings: Mapping[str, Array], key: Array, loss_state: PyTree = ()) -> tuple[Array, dict[str, Array]]: ...


@dataclasses.dataclass(frozen=True)
class DoubleDQN:
    """Offline (double) DQN: Huber(delta = 1) of the double-Q TD error, bootstrapping from the
    target network. Rewards are clipped to [-1, 1] where ``clip_rewards`` (Atari)."""

    gamma: float
    clip_rewards: bool = False

    def __call__(self, apply, params, target_params, batch, settings, key, loss_state=()):
        reward = jnp.clip(batch.reward, -1.0, 1.0) if self.clip_rewards else batch.reward
        q_tm1, features = apply(params, batch.obs)
        # The online net's choice of a' carries no gradient, so it gets its own pass on stopped
        # parameters. One pass on [s, s'] would run the backward pass over s' too (zero cotangents,
        # full matmuls): a third more FLOPs per step, 1.13-1.35x the time on a 2-core CPU.
        q_t_selector, _ = apply(jax.lax.stop_gradient(params), batch.next_obs)
        q_t_value, _ = apply(target_params, batch.next_obs)
        td = double_q_td_error(q_tm1, batch.action, reward, self.gamma * batch.discount,
                               jax.lax.stop_gradient(q_t_value), q_t_selector)
        return jnp.mean(huber(td)), {"q_mean": jnp.mean(q_tm1), "features": features}


@dataclasses.dataclass(frozen=True)
class BVE:
    """Behaviour value estimation: Huber of the SARSA error on the logged next action."""

    gamma: float
    clip_rewards: bool = False

    def __call__(self, apply, params, target_params, batch, settings, key, loss_state=()):
        reward = jnp.clip(batch.reward, -1.0, 1.0) if self.clip_rewards else batch.reward
        q_tm1, features = apply(params, batch.obs)
        q_t, _ = apply(target_params, batch.next_obs)
        td = sarsa_td_error(q_tm1, batch.action, reward, self.gamma * batch.discount,
                            jax.lax.stop_gradient(q_t), batch.next_action)
        return jnp.mean(huber(td)), {"q_mean": jnp.mean(q_tm1), "features": features}


@dataclasses.dataclass(frozen=True)
class MonteCarlo:
    """Huber regression of Q(s, a) onto the logged discounted return-to-go (on-policy evaluation)."""

    def __call__(self, apply, params, target_params, batch, settings, key, loss_state=()):
        q_tm1, features = apply(params, batch.obs)
        return (jnp.mean(huber(mc_return_error(q_tm1, batch.action, batch.mc_return))),
                {"q_mean": jnp.mean(q_tm1), "features": features})


@dataclasses.dataclass(frozen=True)
class BehaviourCloning:
    """Cross-entropy of the logged action under the softmax of the network's outputs (the Q head
    read as logits, so BC and DQN share the network)."""

    def __call__(self, apply, params, target_params, batch, settings, key, loss_state=()):
        logits, features = apply(params, batch.obs)
        return bc_loss(logits, batch.action), {"q_mean": jnp.mean(logits), "features": features}
# ================================================================================================
# 4. Environments: one batched numpy interface
# ================================================================================================

BSUITE_GAMES = ("catch", "cartpole", "mountain_car", "memory_len")
MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
MEMORY_LENGTH = 10  # bsuite/memory_len: steps between the context and the query


class VectorEnv:
    """``num_envs`` copies of one environment, stepped together with automatic reset.

    ``reset() -> obs`` and ``step(actions, active) -> (obs, reward, terminated, truncated)``; for an
    env whose episode ended, ``obs`` is already the first observation of its next episode. An env
    may leave the envs outside the boolean mask ``active`` unstepped (zero outputs) where skipping
    them saves time; the evaluator passes the envs whose first episode still runs. ``frames_stacked``
    is > 1 where the env itself stacks frames (ALE)."""

    num_envs: int
    num_actions: int
    obs_shape: tuple[int, ...]
    obs_dtype: Any
    frames_stacked: int = 1

    def reset(self) -> np.ndarray:
        raise NotImplementedError

    def step(self, actions: np.ndarray, active: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
        # In obs_dtype, as step returns them (MinAtar's states are bool): one dtype, so one compiled
        # policy, and a perturbation rounds the first observation of an episode as it rounds the rest.
        return np.stack([self._reset_one(i) for i in range(self.num_envs)]).astype(self.obs_dtype)

    def step(self, actions, active=None):
        obs = np.zeros((self.num_envs, *self.obs_shape), self.obs_dtype)
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        actions = np.asarray(actions)
        # Each env costs a Python call, so an evaluation steps only the episodes still running: the
        # longest episode sets the loop's length, and most envs finish well before it.
        for i in range(self.num_envs) if active is None else np.flatnonzero(active):
            obs[i], reward[i], terminated[i], truncated[i] = self._step_one(i, int(actions[i]))
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


class _BatchedBsuite(VectorEnv):
    """bsuite's Catch, Cartpole and MountainCar as numpy arrays over all envs: the same equations,
    in the same float64 arithmetic, and one ``np.random.RandomState(seed)`` per env drawn from at
    each of its resets in bsuite's order, so every env's stream of observations, rewards and
    terminations is bsuite's, bit for bit (tests/test_common.py steps both side by side). A Python
    loop over bsuite's objects costs ~9-11 us per env step; this steps 600 envs ~20-40x faster per env
    step (``make bench``: 39.4x on an Intel 2-core machine; 23.6x and 28.6x in two runs on an AMD EPYC)."""

    obs_dtype = np.float32

    def __init__(self, num_envs: int, seed: int, num_actions: int, obs_shape: tuple[int, ...]):
        seeds = np.random.SeedSequence(seed).generate_state(num_envs)  # as BsuiteEnv seeds its envs
        self.rngs = [np.random.RandomState(int(s)) for s in seeds]
        self.num_envs, self.num_actions, self.obs_shape = num_envs, num_actions, obs_shape

    def reset(self) -> np.ndarray:
        self._reset_envs(np.arange(self.num_envs))
        return self._observation()

    def step(self, actions, active=None):  # one numpy step for all envs: nothing to gain by skipping
        reward, terminated, truncated = self._step(np.asarray(actions, np.int64))
        obs = self._observation()
        done = np.flatnonzero(terminated | truncated)
        if done.size:  # auto-reset: the next episode's first observation replaces the last one
            self._reset_envs(done)
            obs[done] = self._observation()[done]
        return obs, reward.astype(np.float32), terminated, truncated

    def _reset_envs(self, envs: np.ndarray) -> None:
        raise NotImplementedError

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _observation(self) -> np.ndarray:
        raise NotImplementedError


class BatchedCatch(_BatchedBsuite):
    """bsuite.environments.catch.Catch (10 rows, 5 columns; actions left, stay, right)."""

    rows, columns = 10, 5

    def __init__(self, num_envs: int, seed: int):
        super().__init__(num_envs, seed, 3, (self.rows, self.columns))
        self.ball_x = np.zeros(num_envs, np.int64)
        self.ball_y = np.zeros(num_envs, np.int64)
        self.paddle_x = np.full(num_envs, self.columns // 2, np.int64)

    def _reset_envs(self, envs):
        for i in envs:
            self.ball_x[i] = self.rngs[i].randint(self.columns)
        self.ball_y[envs] = 0
        self.paddle_x[envs] = self.columns // 2

    def _step(self, actions):
        self.paddle_x = np.clip(self.paddle_x + actions - 1, 0, self.columns - 1)
        self.ball_y += 1
        terminated = self.ball_y == self.rows - 1
        reward = np.where(terminated, np.where(self.paddle_x == self.ball_x, 1.0, -1.0), 0.0)
        return reward, terminated, np.zeros(self.num_envs, bool)

    def _observation(self):
        board = np.zeros((self.num_envs, self.rows, self.columns), np.float32)
        index = np.arange(self.num_envs)
        board[index, self.ball_y, self.ball_x] = 1.0
        board[index, self.rows - 1, self.paddle_x] = 1.0
        return board


class BatchedCartpole(_BatchedBsuite):
    """bsuite.environments.cartpole.Cartpole with its defaults (and its step_cartpole equations)."""

    height_threshold, x_threshold, timescale, max_time, init_range = 0.8, 3.0, 0.01, 10.0, 0.05
    mass_cart, mass_pole, length, force_mag, gravity = 1.0, 0.1, 0.5, 10.0, 9.8

    def __init__(self, num_envs: int, seed: int):
        super().__init__(num_envs, seed, 3, (1, 6))
        self.state = np.zeros((5, num_envs))  # x, x_dot, theta, theta_dot, time_elapsed

    def _reset_envs(self, envs):
        for i in envs:  # four draws in bsuite's order: x, x_dot, theta, theta_dot
            self.state[:4, i] = [self.rngs[i].uniform(low=-self.init_range, high=self.init_range) for _ in range(4)]
        self.state[4, envs] = 0.0

    def _step(self, actions):
        x, x_dot, theta, theta_dot, time_elapsed = self.state
        force = (actions - 1) * self.force_mag
        cos, sin = np.cos(theta), np.sin(theta)
        pl, m_total = self.mass_pole * self.length, self.mass_cart + self.mass_pole
        temp = (force + pl * theta_dot**2 * sin) / m_total
        theta_acc = (self.gravity * sin - cos * temp) / (self.length * (4 / 3 - self.mass_pole * cos**2 / m_total))
        x_acc = temp - pl * theta_acc * cos / m_total
        self.state = np.stack([x + self.timescale * x_dot, x_dot + self.timescale * x_acc,
                               np.remainder(theta + self.timescale * theta_dot, 2 * np.pi),
                               theta_dot + self.timescale * theta_acc, time_elapsed + self.timescale])
        rewarded = (np.cos(self.state[2]) > self.height_threshold) & (np.abs(self.state[0]) < self.x_threshold)
        # bsuite ends an episode that runs past max_time with discount 0: a termination, as there.
        terminated = (self.state[4] > self.max_time) | ~rewarded
        return rewarded.astype(np.float64), terminated, np.zeros(self.num_envs, bool)

    def _observation(self):
        x, x_dot, theta, theta_dot, time_elapsed = self.state
        obs = np.zeros((self.num_envs, 1, 6), np.float32)
        obs[:, 0, 0], obs[:, 0, 1] = x / self.x_threshold, x_dot / self.x_threshold
        obs[:, 0, 2], obs[:, 0, 3] = np.sin(theta), np.cos(theta)
        obs[:, 0, 4], obs[:, 0, 5] = theta_dot, time_elapsed / self.max_time
        return obs


class BatchedMountainCar(_BatchedBsuite):
    """bsuite.environments.mountain_car.MountainCar with its defaults (1,000 steps, then a termination)."""

    min_pos, max_pos, max_speed, goal_pos, force, gravity, max_steps = -1.2, 0.6, 0.07, 0.5, 0.001, 0.0025, 1000

    def __init__(self, num_envs: int, seed: int):
        super().__init__(num_envs, seed, 3, (1, 3))
        self.position, self.velocity = np.zeros(num_envs), np.zeros(num_envs)
        self.timestep = np.zeros(num_envs, np.int64)

    def _reset_envs(self, envs):
        for i in envs:
            self.position[i] = self.rngs[i].uniform(-0.6, -0.4)
        self.velocity[envs], self.timestep[envs] = 0.0, 0

    def _step(self, actions):
        self.timestep += 1
        velocity = self.velocity + ((actions - 1) * self.force + np.cos(3 * self.position) * -self.gravity)
        self.velocity = np.clip(velocity, -self.max_speed, self.max_speed)
        self.position = np.clip(self.position + self.velocity, self.min_pos, self.max_pos)
        self.velocity = np.where(self.position == self.min_pos, np.clip(self.velocity, 0, self.max_speed),
                                 self.velocity)
        terminated = (self.position >= self.goal_pos) | (self.timestep >= self.max_steps)
        return np.full(self.num_envs, -1.0), terminated, np.zeros(self.num_envs, bool)

    def _observation(self):
        return np.stack([self.position, self.velocity, self.timestep / self.max_steps], -1)[:, None].astype(np.float32)


BATCHED_BSUITE = {"catch": BatchedCatch, "cartpole": BatchedCartpole, "mountain_car": BatchedMountainCar}


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
        self.game, self.seed, self.num_envs = game, seed, num_envs
        self.num_actions = int(self.env.single_action_space.n)
        self.obs_shape, self.obs_dtype = (4, 84, 84), np.uint8

    def reset(self):
        return self.env.reset(seed=self.seed)[0]

    def step(self, actions, active=None):  # ALE steps all its envs in C++ threads
        obs, reward, terminated, truncated, _ = self.env.step(np.asarray(actions))
        return obs, reward.astype(np.float32), terminated, truncated

    def close(self):
        self.env.close()

    # ALE's C++ vector env cannot be pickled: a checkpointed online run restarts its episodes (the
    # environments are made again and reset) when it resumes, so Atari resumes are not bitwise.
    def __getstate__(self):
        return {"game": self.game, "num_envs": self.num_envs, "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(state["game"], state["num_envs"], state["seed"])


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


def check_env_ids(env_ids: Iterable[str]) -> None:
    for env_id in env_ids:
        validate_env_id(env_id)


def make_env(env_id: str, num_envs: int, seed: int) -> VectorEnv:
    """One constructor for every family: ``bsuite/<game>``, ``minatar/<game>``, ``atari/<Game>``."""
    family = validate_env_id(env_id)
    game = env_id.split("/", 1)[1]
    if family == "bsuite":
        return BATCHED_BSUITE[game](num_envs, seed) if game in BATCHED_BSUITE else BsuiteEnv(game, num_envs, seed)
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


def digest(*parts: Any) -> str:
    """A short SHA-1 of arrays (their bytes, dtype and shape) and JSON-able values, in order."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, (np.ndarray, jax.Array)):
            a = np.ascontiguousarray(np.asarray(part))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@flax.struct.dataclass
class Dataset:
    """Transitions stored as rows of one array per field, frames stored once.

    Row i holds the observation s_i (one frame), the action a_i taken there, the reward r_i and
    whether that step ended the episode. The next observation of row i is row i+1. Each episode is
    preceded by ``history - 1`` all-zero padding rows (the DQN Replay layout), so the observation
    of row i is rows i-history+1..i stacked, with zeros before the episode start; padding rows and
    rows without a successor are not in ``valid``, the rows a sampler may draw. ``ident`` names the
    contents (a digest of the arrays, or of the files they were read from): it is part of every
    checkpoint's identity, so a run is never resumed on other data.
    """

    obs: Array  # (rows, *frame_shape)
    action: Array  # (rows,) int32
    reward: Array  # (rows,) float32
    terminal: Array  # (rows,) float32, 1 if the step from row i ended the episode
    mc_return: Array  # (rows,) float32, discounted return from row i to its episode's end
    valid: Array  # (transitions,) int32 row indices that may be sampled
    num_actions: int = flax.struct.field(pytree_node=False)
    history: int = flax.struct.field(pytree_node=False, default=1)
    ident: str = flax.struct.field(pytree_node=False, default="")
    size: Array | None = None  # if set, only the first ``size`` entries of ``valid`` are sampled (DQNReplayStream)

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


def returns_to_go(reward: np.ndarray, episode_end: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return from each row to the end of its piece of episode. ``episode_end`` marks
    the rows after which the sum stops: terminal steps, and every cut where the row sequence does
    not continue the same episode (a time-limit truncation, the end of a collection stream or of
    a DQN Replay checkpoint, the write cursor of a replay buffer). Before a cut that is not a
    termination the return is the partial sum up to the cut: the rest was never observed."""
    out = np.zeros(len(reward), np.float32)
    acc = 0.0
    for i in range(len(reward) - 1, -1, -1):
        acc = reward[i] + gamma * acc * (1.0 - float(episode_end[i]))
        out[i] = acc
    return out


def make_dataset(obs, action, reward, terminal, valid, num_actions, history, gamma=0.99, cut=None,
                 ident: str | None = None) -> Dataset:
    """A Dataset from row arrays. ``cut`` (bool per row, default none) marks rows after which the
    rows do not continue the same episode without being terminal (see ``returns_to_go``);
    ``ident`` defaults to a digest of the arrays."""
    reward = np.asarray(reward, np.float32)
    terminal = np.asarray(terminal, np.float32)
    episode_end = terminal > 0 if cut is None else (terminal > 0) | np.asarray(cut, bool)
    ds = Dataset(
        obs=jnp.asarray(obs), action=jnp.asarray(action, jnp.int32), reward=jnp.asarray(reward),
        terminal=jnp.asarray(terminal), mc_return=jnp.asarray(returns_to_go(reward, episode_end, gamma)),
        valid=jnp.asarray(valid, jnp.int32), num_actions=int(num_actions), history=int(history),
    )
    return ds.replace(ident=ident or digest(*jax.tree_util.tree_leaves(ds), int(num_actions), int(history)))


def episode_returns(ds: Dataset) -> np.ndarray:
    """Undiscounted returns of the dataset's complete episodes (its behaviour policy's level). An
    episode is complete if it ends in a terminal row with every row since the last break sampleable;
    a row outside ``valid`` (padding, a truncated step, the unfinished tail of a collection
    stream) breaks the sum, and the piece it ends is not counted."""
    reward, terminal = np.asarray(ds.reward, np.float64), np.asarray(ds.terminal) > 0
    sampleable = np.zeros(len(reward), bool)
    sampleable[np.asarray(ds.valid)] = True
    returns, total, complete = [], 0.0, True
    for r, done, ok in zip(reward, terminal, sampleable):
        total += r
        complete &= bool(ok)
        if done or not ok:
            if done and complete:
                returns.append(total)
            total, complete = 0.0, True
    return np.asarray(returns)


# ---- local collection: an online DQN with action noise (the RL Unplugged bsuite recipe) ----------


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """The behaviour agent that generates a dataset: the online double DQN of section 7 (the one the
    tandem study runs), trained from scratch while it collects. Every transition it takes is
    logged; with probability ``noise`` its action is replaced by a uniformly random one before the
    environment sees it (the RL Unplugged bsuite recipe)."""

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
    learning_fraction: float = 1.0  # the agent learns during this fraction of the collection, then only acts:
    #                                 below 1, a weak behaviour policy (the data-quality study)


COLLECT_VERSION = 3  # bump when the collection algorithm or its numerics change: old caches are ignored
#                     (2: the online DQN; 3: double DQN's own pass for a', new last bits)


def dataset_cache_path(env_id: str, noise: float, num_transitions: int, seed: int, history: int,
                       cfg: CollectConfig, data_dir: Path | None = None) -> Path:
    key = json.dumps([COLLECT_VERSION, env_id, noise, num_transitions, seed, history,
                      dataclasses.asdict(cfg)], sort_keys=True)
    name_digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"{env_id.replace('/', '_')}_noise{noise:g}_n{num_transitions}_s{seed}_h{history}_{name_digest}.npz"
    return Path(data_dir or DATA_DIR) / name


def atomic_write(path: Path, write: Callable[[Any], None], suffix: str = ".tmp") -> None:
    """Writes ``path`` through a temporary file in the same directory and a rename, so a reader
    (or a killed writer) never sees half a file."""
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


def _collected_dataset(arrays: dict, history: int, gamma: float) -> Dataset:
    # In the collected layout every row outside `valid` is padding, a truncated step or the
    # unfinished tail of a collection stream: the episode does not continue past it.
    sampleable = np.zeros(len(arrays["reward"]), bool)
    sampleable[arrays["valid"]] = True
    return make_dataset(**{k: arrays[k] for k in ("obs", "action", "reward", "terminal", "valid")},
                        num_actions=int(arrays["num_actions"]), history=history, gamma=gamma, cut=~sampleable)


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
            return _collected_dataset(arrays, history, cfg.gamma)
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            print(f"warning: cached dataset {path} is unreadable ({e}); collecting it again", file=sys.stderr)
    arrays = _collect(env_id, noise, num_transitions, seed, history, cfg, progress)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays), ".npz")
    return _collected_dataset(arrays, history, cfg.gamma)


def _collect(env_id, noise, num_transitions, seed, history, cfg: CollectConfig, progress) -> dict:
    """Runs the behaviour agent (section 7's online DQN, one seed, ``cfg.num_envs`` environments)
    and logs each environment's transitions as one stream of rows in the Dataset layout."""
    from tqdm.auto import tqdm

    env = make_env(env_id, 1, seed)
    num_actions, obs_shape, obs_dtype = env.num_actions, env.obs_shape, env.obs_dtype
    env.close()
    stop = -(-num_transitions // cfg.num_envs) * cfg.num_envs
    net = default_network(env_id, num_actions)
    learner_key, run_key = jax.random.split(jax.random.key(seed))
    learner = init_learners(net, jnp.zeros((1, *obs_shape), obs_dtype), [learner_key], [cfg.learning_rate], "adam")
    state = OnlineState((learner,), None, Replay.empty(stop, obs_shape, obs_dtype, 1), run_key[None])
    step_fn = make_online_step(net, "adam", (DoubleDQN(cfg.gamma),), acting=0, batch_size=cfg.batch_size,
                               updates_per_step=cfg.updates_per_env_step, learning_starts=cfg.learning_starts,
                               target_update_period=cfg.target_update_period)
    program = OnlineProgram(env_id, 1, cfg.num_envs, seed, 0, stop, stop, INSERT_BLOCK_PER_ENV * cfg.num_envs, cfg.gamma)
    rng = np.random.default_rng(seed)
    decay = max(1, int(cfg.epsilon_decay_fraction * stop))
    epsilon = lambda t: max(cfg.epsilon_end, cfg.epsilon_start - (cfg.epsilon_start - cfg.epsilon_end) * t / decay)

    def noisy(actions):  # the RL Unplugged recipe: the logged action is replaced by a random one w.p. noise
        replace = rng.random(actions.shape) < noise
        return np.where(replace, rng.integers(num_actions, size=actions.shape), actions).astype(np.int32)

    streams = [{"obs": [], "action": [], "reward": [], "terminal": [], "valid": []} for _ in range(cfg.num_envs)]

    def pad(stream):  # history - 1 zero rows before each episode (the DQN Replay layout)
        for _ in range(history - 1):
            stream["obs"].append(np.zeros(obs_shape, obs_dtype))
            for k, v in (("action", 0), ("reward", 0.0), ("terminal", 0.0), ("valid", False)):
                stream[k].append(v)

    def log(obs, actions, reward, terminated, truncated):  # (1, num_envs, ...) arrays
        for i, stream in enumerate(streams):
            stream["obs"].append(obs[0, i])
            stream["action"].append(actions[0, i])
            stream["reward"].append(reward[0, i])
            stream["terminal"].append(float(terminated[0, i]))
            stream["valid"].append(not truncated[0, i])  # a truncated step's successor row is a new episode
            if terminated[0, i] or truncated[0, i]:
                pad(stream)

    for stream in streams:
        pad(stream)
    with tqdm(total=stop, desc=f"collect {env_id} noise={noise:g}", disable=not progress, leave=False) as bar:
        run_online(program, step_fn, state, Recorder(None, {}, [], 0.0), epsilon=epsilon,
                   learning=lambda t: t < cfg.learning_fraction * stop, behaviour=noisy, observe=log,
                   progress=bar.update)
    for stream in streams:  # the last row of a stream has no successor unless it ended its episode
        if stream["valid"] and stream["terminal"][-1] == 0.0:
            stream["valid"][-1] = False
    cat = {k: np.concatenate([np.asarray(stream[k]) for stream in streams]) for k in streams[0]}
    return {"obs": cat["obs"].astype(obs_dtype), "action": cat["action"].astype(np.int32),
            "reward": cat["reward"].astype(np.float32), "terminal": cat["terminal"].astype(np.float32),
            "valid": np.flatnonzero(cat["valid"]).astype(np.int32), "num_actions": np.asarray(num_actions)}


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


def read_dqn_replay_checkpoint(directory: Path, n: int, history: int) -> dict[str, np.ndarray]:
    """One DQN Replay checkpoint's rows: observation, action, reward, terminal, and which rows may be
    sampled (``valid``, indices) and where episodes are cut (``cut``: the last row, the write
    cursor). Raises DatasetError naming a missing or corrupt file."""
    arrays = {k: _load_gz_npy(directory / f"$store$_{k}_ckpt.{n}.gz") for k in DQN_REPLAY_FIELDS}
    add_count = int(_load_gz_npy(directory / f"add_count_ckpt.{n}.gz"))
    invalid_range = _load_gz_npy(directory / f"invalid_range_ckpt.{n}.gz")
    rows = len(arrays["observation"])
    if arrays["observation"].shape[1:] != (84, 84) or any(len(arrays[k]) != rows for k in DQN_REPLAY_FIELDS):
        raise DatasetError(f"DQN Replay checkpoint {n} in {directory} has inconsistent shapes: "
                           + ", ".join(f"{k}{arrays[k].shape}" for k in DQN_REPLAY_FIELDS))
    arrays["valid"] = dqn_replay_valid(arrays["terminal"], add_count, invalid_range, history)
    # Episodes do not run on past the checkpoint's last row, nor past the write cursor (the newest
    # row; the next one is the oldest of a wrapped circular buffer).
    cut = np.zeros(rows, bool)
    cut[-1] = True
    if add_count > 0:
        cut[(add_count - 1) % rows] = True
    arrays["cut"] = cut
    return arrays


def dqn_replay_files(directory: Path, checkpoints: Sequence[int]) -> str:
    """A digest naming DQN Replay checkpoints by their files (hashing ~7 GB of frames each would
    take minutes)."""
    files = [p for n in checkpoints for p in sorted(directory.glob(f"*_ckpt.{n}.gz"))]
    return digest([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def check_dqn_replay_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise DatasetError(f"DQN Replay directory {directory} does not exist (pass --data-dir "
                           "<...>/<Game>/<run>/replay_logs)")


def load_dqn_replay(directory: str | Path, checkpoints: Sequence[int], num_actions: int | None = None,
                    history: int = 4, gamma: float = 0.99) -> Dataset:
    """Loads DQN Replay checkpoints ``$store$_<field>_ckpt.<N>.gz`` of one game and run.

    Frames are stored once (84x84 uint8 per row) and stacked at gather time; the zero frames that
    Dopamine writes before each episode provide the padding. Checkpoints are concatenated; the
    validity rule keeps stacks and successors inside their own checkpoint. Raises DatasetError
    naming any missing or corrupt file. (DQNReplayStream reads a whole run with bounded memory.)
    """
    directory = Path(directory)
    check_dqn_replay_directory(directory)
    parts = {k: [] for k in (*DQN_REPLAY_FIELDS, "valid", "cut")}
    offset = 0
    for n in checkpoints:
        arrays = read_dqn_replay_checkpoint(directory, n, history)
        arrays["valid"] = arrays["valid"] + offset
        for k in parts:
            parts[k].append(arrays[k])
        offset += len(arrays["observation"])
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    if num_actions is None:
        num_actions = int(cat["action"].max()) + 1
    ident = digest(dqn_replay_files(directory, checkpoints), history, gamma)
    return make_dataset(cat["observation"], cat["action"], cat["reward"], cat["terminal"], cat["valid"],
                        num_actions, history, gamma, cut=cat["cut"], ident=ident)


class DQNReplayStream:
    """A whole DQN Replay run read the way Dopamine's fixed replay buffer reads it: ``resident`` of
    its checkpoints (chosen at random) are on the device at a time, and every ``swap_every``
    gradient steps one resident checkpoint (in turn) is replaced by a random one that is not.
    The incoming checkpoint is read from disk by a background thread while the chunks train, so a
    swap waits only if the disk was slower than ``swap_every`` steps.

    The trainer sees a Dataset of fixed shapes, whatever is resident: ``resident`` slots of
    ``rows`` rows each, their valid rows listed first in ``valid`` and ``size`` of them sampleable,
    so a swap recompiles nothing and sampling stays uniform over the resident transitions.

    Memory: on the device, ``resident`` x ``rows`` x (84 x 84 + 20) bytes (DQN Replay: 1M rows, about
    7.1 GB per checkpoint) plus one incoming checkpoint during a swap; on the host, the checkpoint
    being read (another ~7 GB as arrays). The schedule of swaps is a function of ``seed`` alone:
    at any step the resident set can be rebuilt, so a resumed run sees the same data."""

    def __init__(self, directory: str | Path, checkpoints: Sequence[int], resident: int, swap_every: int, seed: int,
                 num_actions: int, history: int = 4, gamma: float = 0.99):
        self.directory, self.checkpoints = Path(directory), list(checkpoints)
        check_dqn_replay_directory(self.directory)
        if not 0 < resident <= len(self.checkpoints):
            raise ValueError(f"resident checkpoints ({resident}) must be in 1..{len(self.checkpoints)}")
        self.resident, self.swap_every, self.seed = resident, swap_every, seed
        self.num_actions, self.history, self.gamma = num_actions, history, gamma
        self.rows = len(_load_gz_npy(self.directory / f"$store$_action_ckpt.{self.checkpoints[0]}.gz"))
        self.ident = digest(dqn_replay_files(self.directory, self.checkpoints), resident, swap_every, seed, history,
                            gamma)
        self._swap_index: int | None = None
        self._dataset: Dataset | None = None
        self._fields: dict[str, Array] = {}
        self._valid: list[np.ndarray] = []
        self._prefetch: tuple[int, Any] | None = None  # (swap index, (reading thread, its result))

    def schedule(self, swap_index: int) -> list[int]:
        """The checkpoints resident after ``swap_index`` swaps, slot by slot."""
        rng = np.random.default_rng(self.seed)
        slots = list(rng.choice(self.checkpoints, size=self.resident, replace=False))
        for n in range(1, swap_index + 1):
            outside = [c for c in self.checkpoints if c not in slots]
            if outside:
                slots[(n - 1) % self.resident] = int(rng.choice(outside))
        return [int(c) for c in slots]

    def _read(self, checkpoint: int) -> dict[str, np.ndarray]:
        arrays = read_dqn_replay_checkpoint(self.directory, checkpoint, self.history)
        if len(arrays["observation"]) != self.rows:
            raise DatasetError(f"DQN Replay checkpoint {checkpoint} has {len(arrays['observation'])} rows, "
                               f"not {self.rows} like the others")
        return arrays

    def _start_prefetch(self, swap_index: int) -> None:
        import threading

        incoming = self.schedule(swap_index + 1)[swap_index % self.resident]
        holder: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: holder.update(arrays=self._read(incoming)), daemon=True)
        thread.start()
        self._prefetch = (swap_index + 1, (thread, holder))

    def _write(self, slot: int, arrays: dict[str, np.ndarray]) -> None:
        """Writes one checkpoint into its slot of the resident arrays, on the device, in place."""
        episode_end = (arrays["terminal"] > 0) | arrays["cut"]
        fields = {"obs": arrays["observation"], "action": arrays["action"].astype(np.int32),
                  "reward": arrays["reward"].astype(np.float32), "terminal": arrays["terminal"].astype(np.float32),
                  "mc_return": returns_to_go(arrays["reward"].astype(np.float32), episode_end, self.gamma)}
        self._fields = _write_rows(self._fields, fields, slot * self.rows)
        self._valid[slot] = arrays["valid"] + slot * self.rows

    def _dataset_of(self, slots: list[int]) -> Dataset:
        valid = np.concatenate(self._valid)
        padded = np.concatenate([valid, np.full(self.resident * self.rows - len(valid), valid[0])])
        return Dataset(**self._fields, valid=jnp.asarray(padded, jnp.int32), num_actions=self.num_actions,
                       history=self.history, ident=digest(self.ident, slots), size=jnp.asarray(len(valid), jnp.int32))

    def at(self, step: int) -> Dataset:
        """The resident data for gradient step ``step`` (swapping in the next checkpoint when a
        swap is due; the first call, or a resumed run, reads the whole resident set)."""
        swap_index = step // self.swap_every
        if swap_index == self._swap_index:
            return self._dataset
        slots = self.schedule(swap_index)
        if self._swap_index is not None and swap_index == self._swap_index + 1 and self._prefetch \
                and self._prefetch[0] == swap_index:
            thread, holder = self._prefetch[1]
            thread.join()  # usually done already: it had swap_every steps of training to read
            self._write((swap_index - 1) % self.resident, holder["arrays"])
        else:  # the whole resident set, slot by slot (the host holds one checkpoint at a time)
            frame = (84, 84)
            size = self.resident * self.rows
            self._fields = {"obs": jnp.zeros((size, *frame), jnp.uint8), "action": jnp.zeros(size, jnp.int32),
                            "reward": jnp.zeros(size), "terminal": jnp.zeros(size), "mc_return": jnp.zeros(size)}
            self._valid = [np.zeros(0, np.int64)] * self.resident
            for i, checkpoint in enumerate(slots):
                self._write(i, self._read(checkpoint))
        self._swap_index = swap_index
        self._dataset = self._dataset_of(slots)
        self._prefetch = None
        if len(self.checkpoints) > self.resident:
            self._start_prefetch(swap_index)
        return self._dataset


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(fields: dict[str, Array], new: dict[str, Array], start: Array) -> dict[str, Array]:
    return jax.tree_util.tree_map(lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b.astype(a.dtype), start, 0),
                                  fields, new)


def offline_dataset(env_id: str, *, noise: float, num_transitions: int, seed: int = DATA_SEED, history: int = 1,
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


def replay_data(env_id: str, *, noise: float, num_transitions: int, data_dir: str | Path | None,
                checkpoints: Sequence[int], resident: int, swap_every: int, run: int = 1) -> "Dataset | DQNReplayStream":
    """``offline_dataset``, except that Atari data over more checkpoints than ``resident`` stream
    through the device (DQNReplayStream, Dopamine's fixed replay buffer) instead of loading at once."""
    if env_id.startswith("atari/") and len(checkpoints) > resident:
        validate_env_id(env_id)
        if data_dir is None:
            raise DatasetError(f"{env_id} needs the DQN Replay files: pass --data-dir DIR with "
                               "DIR/<Game>/<run>/replay_logs/$store$_*_ckpt.N.gz")
        game = env_id.split("/", 1)[1]
        return DQNReplayStream(Path(data_dir) / game / str(run) / "replay_logs", checkpoints, resident, swap_every,
                               DATA_SEED, num_actions=make_env(env_id, 1, 0).num_actions)
    return offline_dataset(env_id, noise=noise, num_transitions=num_transitions, data_dir=data_dir,
                           checkpoints=checkpoints)



# ================================================================================================
# 6. Learner: one agent's state and its gradient step (the offline trainer and the online agents)
# ================================================================================================


class TrainState(NamedTuple):
    params: PyTree
    target_params: PyTree
    opt_state: PyTree
    key: Array
    step: Array
    loss_state: PyTree = ()  # what a stateful loss carries between steps (Loss), else nothing


Optimizer = Literal["adam", "rmsprop"]


def make_optimizer(name: str, learning_rate: float | Array = 0.0) -> optax.GradientTransformation:
    """Adam (the paper's optimizer) or RMSProp with Dopamine's DQN settings (as in tandem DQN). The
    learning rate is injected as optimizer state, so it is a traced value: 12 learning rates are
    one compiled program. The rate given here is what ``init`` stores; ``update`` reads it back.
    Adam runs per parameter leaf: one flat vector for its moments (``optax.flatten``) measured 1.08x
    for one member and 0.98x for the 60-member sweep on 2 CPU cores, side by side, so it was not kept."""
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    if name == "rmsprop":
        return optax.inject_hyperparams(optax.rmsprop)(learning_rate=learning_rate, decay=0.95, eps=1e-5,
                                                        centered=True)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or rmsprop")


def init_learners(net: nn.Module, sample_obs: Array, keys: Array, learning_rates: Sequence[float],
                  optimizer: str, loss: Loss | None = None) -> TrainState:
    """Stacked initial states of learners with these PRNG keys (one per learner): each key splits
    into the parameters' and the learner's own training key, so learners that share a key (the 12
    learning rates of one seed) start from the same weights. A stateful ``loss`` gets its
    ``init_state``."""
    key_data = jnp.stack([jax.random.key_data(k) for k in keys])
    # A loss enters the program only through its init_state: the others share one program (so
    # initial_params, which knows no loss, reuses the trainer's).
    loss = loss if hasattr(loss, "init_state") else None
    return _init_fn(net, optimizer, loss)(jnp.asarray(sample_obs), key_data, jnp.asarray(learning_rates, jnp.float32))


@functools.lru_cache(maxsize=32)  # compiled once per (network, optimizer, loss), not once per run
def _init_fn(net: nn.Module, optimizer: str, loss: Loss | None = None) -> Callable:
    def init_one(sample_obs, key_data, lr):
        init_key, train_key = jax.random.split(jax.random.wrap_key_data(key_data))
        params = net.init(init_key, sample_obs)
        opt_state = make_optimizer(optimizer, lr).init(params)
        loss_state = loss.init_state(params) if hasattr(loss, "init_state") else ()
        return TrainState(params, params, opt_state, train_key, jnp.zeros((), jnp.int32), loss_state)

    # per_member, not vmap: the LSTM's orthogonal initialiser is a QR (see per_member).
    return jax.jit(lambda sample_obs, keys, lrs: per_member(functools.partial(init_one, sample_obs))(keys, lrs))


def seed_keys(seeds: Iterable[int]) -> list[Array]:
    """The root key of each training seed."""
    return [jax.random.key(int(s)) for s in seeds]


def initial_params(net: nn.Module, sample_obs: Array, seeds: Sequence[int]) -> PyTree:
    """Stacked initial parameters of learners with these seeds: the weights the offline trainer
    starts them from (drawn by ``init_learners`` itself, so the two can never disagree). Drawn for
    as many members as the trainer draws (its padding, ``member_padding``), then cut: the trainer's
    compiled initialisation serves both (each member's draw is its own, whatever the count)."""
    seeds = list(seeds)
    padded = seeds + seeds[-1:] * member_padding(len(seeds))
    params = init_learners(net, sample_obs, seed_keys(padded), [0.0] * len(padded), "adam").params
    return jax.tree_util.tree_map(lambda x: x[:len(seeds)], params)


GradientRule = Callable[[Callable[[PyTree], tuple[Array, dict]], PyTree, Mapping[str, Array]],
                        tuple[tuple[Array, dict], PyTree]]


def plain_gradient(loss_of_params: Callable, params: PyTree, settings: Mapping[str, Array]):
    """The gradient of the loss at the parameters: ``((value, aux), grads)``. The trainers take
    another rule in its place (SAM, in the interventions study) with the same signature."""
    return jax.value_and_grad(loss_of_params, has_aux=True)(params)


def learner_step(apply: Callable, optimizer: optax.GradientTransformation, state: TrainState, batch: Batch,
                 loss: Loss, settings: Mapping[str, Array], key: Array | None,
                 gradient: GradientRule = plain_gradient) -> tuple[TrainState, Array, Array]:
    """One gradient step of one learner on one batch: the loss's gradient (by ``gradient``), an
    optimizer update, and a copy of the online parameters into the target network every
    ``settings["target_update_period"]`` steps. Returns (new state, loss, mean Q); ``state.key``
    is passed through untouched."""
    (value, aux), grads = gradient(lambda p: loss(apply, p, state.target_params, batch, settings, key,
                                                  state.loss_state), state.params, settings)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_count = state.step + 1
    target = optax.periodic_update(params, state.target_params, step_count, settings["target_update_period"])
    loss_state = aux.get("loss_state", state.loss_state)
    return TrainState(params, target, opt_state, state.key, step_count, loss_state), value, aux["q_mean"]


def stack_trees(trees: Sequence[PyTree]) -> PyTree:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


# ================================================================================================
# 7. Online DQN: the agent that acts, fills its replay and learns (the tandem study's active agent)
# ================================================================================================


class Transitions(NamedTuple):
    obs: Any  # (n, *obs_shape)
    action: Any  # (n,) int32
    reward: Any  # (n,) float32
    discount: Any  # (n,) float32, 0 where the step terminated its episode
    mc_return: Any  # (n,) float32, discounted return from this step to the episode's end


SAMPLE_BLOCK = 64  # rows per block of Replay.sample's two-level search (a draw reads ~capacity/64 + 64 counts)


class Replay(NamedTuple):
    """One seed's replay on the device: ring arrays of transitions written in time order, so the
    successor of row i is row i + 1 (mod capacity).

    ``sampleable`` says which rows a minibatch may draw, uniformly: a row is drawn only when its
    successor is the true next state. That excludes the last step of a time-limit truncation (its
    next state was never stored: the environment reset) and, until the next insert writes its
    successor, the newest row when its episode goes on (``pending``)."""

    data: Transitions
    sampleable: Array  # (capacity,) bool
    ptr: Array  # next row to write
    size: Array  # rows written so far, at most the capacity
    pending: Array  # bool: the newest row waits for its successor

    @staticmethod
    def empty(capacity: int, obs_shape, obs_dtype, seeds: int) -> "Replay":
        """Empty replays of ``seeds`` seeds (a leading seed axis on every array)."""
        zeros = lambda *shape, dtype=jnp.float32: jnp.zeros((seeds, *shape), dtype)
        data = Transitions(zeros(capacity, *obs_shape, dtype=obs_dtype), zeros(capacity, dtype=jnp.int32),
                           zeros(capacity), zeros(capacity), zeros(capacity))
        return Replay(data, zeros(capacity, dtype=bool), zeros(dtype=jnp.int32), zeros(dtype=jnp.int32),
                      zeros(dtype=bool))

    def insert(self, block: Transitions, sampleable: Array, count: Array, continues: Array) -> "Replay":
        """Writes the first ``count`` rows of ``block`` at the insert index (the rest are dropped);
        ``continues``: the last of them is mid-episode, its successor comes in the next block."""
        capacity = self.data.action.shape[0]
        newest = (self.ptr - 1) % capacity
        released = self.sampleable.at[newest].set(self.sampleable[newest] | (self.pending & (count > 0)))
        i = jnp.arange(block.action.shape[0])
        rows = jnp.where(i < count, (self.ptr + i) % capacity, capacity)  # out of range: not written
        data = jax.tree_util.tree_map(lambda buf, new: buf.at[rows].set(new, mode="drop"), self.data, block)
        return Replay(data, released.at[rows].set(sampleable, mode="drop"), (self.ptr + count) % capacity,
                      jnp.minimum(self.size + count, capacity), jnp.where(count > 0, continues, self.pending))

    def sample(self, key: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
        """Rows drawn uniformly among the sampleable ones, and how many rows are sampleable. A row is,
        for a uniform j, the (j+1)-th sampleable row (the capacity, an out-of-range row, while there
        are none). It is found in two levels, the block of SAMPLE_BLOCK rows that holds it and then
        its place in that block, because a prefix sum over the whole buffer made sampling from a
        200k replay cost as much as the learning step itself; the rows are the prefix sum's."""
        capacity = self.sampleable.shape[0]
        blocks = -(-capacity // SAMPLE_BLOCK)
        flags = jnp.pad(self.sampleable, (0, blocks * SAMPLE_BLOCK - capacity)).reshape(blocks, SAMPLE_BLOCK)
        per_block = jnp.sum(flags, axis=1, dtype=jnp.int32)
        through = jnp.cumsum(per_block)  # sampleable rows in this block and the ones before it
        j = jax.random.randint(key, shape, 0, jnp.maximum(through[-1], 1))
        block = jnp.searchsorted(through, j, side="right")
        inside = jnp.minimum(block, blocks - 1)
        rank = j - (through[inside] - per_block[inside])  # the row's rank among its block's sampleable rows
        offset = jnp.sum(jnp.cumsum(flags[inside].astype(jnp.int32), axis=-1) <= rank[..., None], axis=-1)
        return jnp.where(block < blocks, inside * SAMPLE_BLOCK + offset, capacity).astype(jnp.int32), through[-1]

    def batch(self, rows: Array) -> Batch:
        following = (rows + 1) % self.data.action.shape[0]
        d = self.data
        return Batch(obs=d.obs[rows], action=d.action[rows], reward=d.reward[rows], discount=d.discount[rows],
                     next_obs=d.obs[following], next_action=d.action[following], mc_return=d.mc_return[rows])


class EpisodeQueue:
    """Host side of the replay: each environment's running episode and each seed's finished
    transitions waiting to enter its device buffer, at most ``block`` rows per vector step.

    An episode is queued when it ends, with its discounted return-to-go. A terminated episode's
    last row has discount 0; a truncated one's last row keeps discount 1 but is not sampleable
    (its next state is not stored) and its return-to-go is the partial sum (``returns_to_go``)."""

    def __init__(self, seeds: int, num_envs: int, block: int, obs_shape, obs_dtype, gamma: float):
        self.block, self.gamma = block, gamma
        self.running = [[[] for _ in range(num_envs)] for _ in range(seeds)]
        self.waiting: list[list[tuple[Transitions, np.ndarray, np.ndarray]]] = [[] for _ in range(seeds)]
        self.obs_shape, self.obs_dtype = tuple(obs_shape), obs_dtype

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
            truncated: np.ndarray) -> None:
        """One vector step: arrays of shape (seeds, num_envs, ...)."""
        for s, episodes in enumerate(self.running):
            for e, episode in enumerate(episodes):
                episode.append((obs[s, e], action[s, e], reward[s, e]))
                if terminated[s, e] or truncated[s, e]:
                    self.waiting[s].append(self._finish(episode, bool(terminated[s, e])))
                    episodes[e] = []

    def _finish(self, steps: list, terminated: bool):
        obs, action, reward = zip(*steps)
        n = len(steps)
        reward = np.asarray(reward, np.float32)
        end = np.zeros(n, bool)
        end[-1] = True
        discount = np.ones(n, np.float32)
        discount[-1] = 0.0 if terminated else 1.0
        sampleable = np.ones(n, bool)
        sampleable[-1] = terminated  # a truncated step's next state is not stored
        rows = Transitions(np.stack(obs), np.asarray(action, np.int32), reward, discount,
                           returns_to_go(reward, end, self.gamma))
        return rows, sampleable, end

    def take(self) -> tuple[Transitions, np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``block`` waiting rows per seed, padded to ``block``: (Transitions (seeds, block, ...),
        sampleable (seeds, block), counts (seeds,), continues (seeds,))."""
        heads, flags, counts, continues = [], [], [], []
        for s, waiting in enumerate(self.waiting):
            if waiting:
                rows = Transitions(*(np.concatenate(f) for f in zip(*(w[0] for w in waiting))))
                sampleable = np.concatenate([w[1] for w in waiting])
                end = np.concatenate([w[2] for w in waiting])
            else:
                rows = Transitions(np.zeros((0, *self.obs_shape), self.obs_dtype), np.zeros(0, np.int32),
                                   *(np.zeros(0, np.float32) for _ in range(3)))
                sampleable, end = np.zeros(0, bool), np.zeros(0, bool)
            n = min(self.block, len(end))
            self.waiting[s] = ([(Transitions(*(f[n:] for f in rows)), sampleable[n:], end[n:])]
                               if len(end) > n else [])
            head_flags = sampleable[:n].copy()
            goes_on = n > 0 and not end[n - 1]  # the block cuts an episode: its successor comes next
            if goes_on:
                head_flags[-1] = False  # released by the next insert
            pad = self.block - n
            heads.append(Transitions(*(np.concatenate([f[:n], np.zeros((pad, *f.shape[1:]), f.dtype)]) for f in rows)))
            flags.append(np.concatenate([head_flags, np.zeros(pad, bool)]))
            counts.append(n)
            continues.append(goes_on)
        return (Transitions(*(np.stack(f) for f in zip(*heads))), np.stack(flags), np.asarray(counts, np.int32),
                np.asarray(continues))


def epsilon_greedy(key: Array, q: Array, epsilon: Array) -> Array:
    explore_key, action_key = jax.random.split(key)
    random_action = jax.random.randint(action_key, q.shape[:1], 0, q.shape[-1])
    return jnp.where(jax.random.uniform(explore_key, q.shape[:1]) < epsilon, random_action, jnp.argmax(q, axis=-1))


INSERT_BLOCK_PER_ENV = 8  # finished transitions a seed may move into its replay per vector step, per environment


class OnlineState(NamedTuple):
    """Everything one seed's online program carries from step to step (stacked over seeds)."""

    learners: tuple[TrainState, ...]
    actor: PyTree  # the frozen acting parameters, or None where a learner acts (its current params)
    replay: Replay
    key: Array


def make_online_step(net: nn.Module, optimizer: str, losses: tuple[Loss, ...], *, acting: int | None,
                     batch_size: int, updates_per_step: int, learning_starts: int,
                     target_update_period: int) -> Callable:
    """The one jitted step of an online program, vmapped over seeds:
    ``(state, block, sampleable, count, continues, obs, epsilon, learning) -> (state, actions, mean
    loss per learner)``.

    Per seed: move ``count`` finished transitions into the replay; draw ``updates_per_step`` x
    ``batch_size`` rows among the sampleable ones; give every learner the same minibatches in the
    same order, each with its own loss (``losses[k]`` for learner k) and its own optimizer state;
    then act epsilon-greedily on ``obs`` with learner ``acting`` (after its update) or, if
    ``acting`` is None, with the frozen ``state.actor``. Learners start updating once their
    seed's replay holds ``learning_starts`` sampleable transitions, and only while ``learning``."""
    opt = make_optimizer(optimizer)
    settings = {"target_update_period": target_update_period}

    def seed_step(state: OnlineState, block: Transitions, sampleable, count, continues, obs, epsilon, learning):
        replay = state.replay.insert(block, sampleable, count, continues)
        key, sample_key, act_key = jax.random.split(state.key, 3)
        rows, num_sampleable = replay.sample(sample_key, (updates_per_step, batch_size))

        def update(learners, rows):
            batch = replay.batch(rows)
            stepped = [learner_step(net.apply, opt, learner, batch, loss, settings, None)
                       for learner, loss in zip(learners, losses)]
            return tuple(s[0] for s in stepped), jnp.stack([s[1] for s in stepped])

        updated, loss = jax.lax.scan(update, state.learners, rows)
        ready = (num_sampleable >= learning_starts) & learning
        learners = jax.tree_util.tree_map(lambda new, old: jnp.where(ready, new, old), updated, state.learners)
        actor = learners[acting].params if acting is not None else state.actor
        actions = epsilon_greedy(act_key, net.apply(actor, obs)[0], epsilon)
        return OnlineState(learners, state.actor, replay, key), actions, jnp.where(ready, jnp.mean(loss, axis=0), jnp.nan)

    return jax.jit(jax.vmap(seed_step, in_axes=(0, 0, 0, 0, 0, 0, None, None)), donate_argnums=0)


class SeedEnvs:
    """``num_envs`` environments per seed (seed s's environments are seeded by ``base + s`` alone),
    stepped together; arrays are (seeds, num_envs, ...). Picklable (a checkpoint keeps them)."""

    def __init__(self, env_id: str, seeds: int, num_envs: int, base: int):
        self.envs = [make_env(env_id, num_envs, base + s) for s in range(seeds)]
        self.num_actions, self.obs_shape, self.obs_dtype = (self.envs[0].num_actions, self.envs[0].obs_shape,
                                                           self.envs[0].obs_dtype)

    def reset(self) -> np.ndarray:
        return np.stack([env.reset() for env in self.envs])

    def step(self, actions: np.ndarray):
        return tuple(np.stack(x) for x in zip(*(env.step(a) for env, a in zip(self.envs, actions))))

    def close(self) -> None:
        for env in self.envs:
            env.close()


@dataclasses.dataclass(frozen=True)
class OnlineProgram:
    """One online program: which environment, how many seeds and environments per seed, and the
    span of environment steps (per seed) it runs, logging every ``log_every`` steps."""

    env_id: str
    seeds: int
    num_envs: int
    env_seed: int  # seed s's environments are seeded by env_seed + s
    start: int
    stop: int
    log_every: int
    insert_block: int  # finished transitions a seed may move into its replay per vector step
    gamma: float


def run_online(program: OnlineProgram, step_fn: Callable, state: OnlineState, recorder: "Recorder", *,
               epsilon: Callable[[int], float], learning: Callable[[int], bool] = lambda step: True,
               log: Callable[[int, OnlineState, np.ndarray | None], None] | None = None,
               behaviour: Callable[[np.ndarray], np.ndarray] | None = None,
               observe: Callable[..., None] | None = None, keep_at: int | None = None,
               progress: Callable[[int], None] = lambda n: None, timings: "Timings | None" = None,
               ) -> tuple[OnlineState, Any]:
    """Runs ``program`` from its start (or from the recorder's checkpoint) to its stop: per vector
    step, the queued finished episodes enter the replay, the learners update (while
    ``learning(step)``) and the actor acts epsilon-greedily (``step_fn``); ``behaviour(actions)``
    may replace actions before the environments see them (the data collector's action noise);
    the environments step and ``observe(obs, actions, reward, terminated, truncated)`` sees every
    transition. Every ``log_every`` environment steps, ``log(step, state, mean losses since the
    last log)`` records what it wants through the recorder; the checkpoint then holds the device
    state and the host's (environments, episode queue, current observations), so a killed run
    resumes bit for bit (Atari: its episodes restart). Returns the final state and, if
    ``keep_at`` is given, a host copy (``to_host``) of the state at that step."""
    import cloudpickle

    timings = timings or Timings()
    resumed = recorder.resume()
    if resumed is None:
        envs = SeedEnvs(program.env_id, program.seeds, program.num_envs, program.env_seed)
        queue = EpisodeQueue(program.seeds, program.num_envs, program.insert_block, envs.obs_shape, envs.obs_dtype,
                             program.gamma)
        host = {"step": program.start, "envs": envs, "queue": queue, "obs": envs.reset(), "losses": [], "kept": None}
        if log is not None:
            log(program.start, state, None)
    else:
        state = restore_like(state, resumed[0])
        host = cloudpickle.loads(resumed[2])
        timings.note_resumed(recorder, f"step {host['step']} of {program.stop}")
    progress(host["step"] - program.start)
    last_save = time.time()
    first = True
    while host["step"] < program.stop:
        block, sampleable, counts, continues = host["queue"].take()
        with timings("compile" if first else "act_and_learn"):
            state, actions, loss = step_fn(state, block, sampleable, counts, continues, host["obs"],
                                           epsilon(host["step"]), learning(host["step"]))
            actions = np.asarray(actions)
        first = False
        with timings("environment"):
            if behaviour is not None:
                actions = behaviour(actions)
            next_obs, reward, terminated, truncated = host["envs"].step(actions)
            host["queue"].add(host["obs"], actions, reward, terminated, truncated)
            if observe is not None:
                observe(host["obs"], actions, reward, terminated, truncated)
        host["losses"].append(np.asarray(loss))
        host["obs"] = next_obs
        host["step"] += program.num_envs
        progress(program.num_envs)
        if host["step"] == keep_at:
            host["kept"] = to_host(state)
        if host["step"] % program.log_every == 0:
            with quiet_nan_warnings():
                mean_loss = np.nanmean(np.stack(host["losses"]), axis=0)  # NaN: not learning yet
            host["losses"] = []
            if log is not None:
                log(host["step"], state, mean_loss)
            if recorder.due(last_save) or host["step"] >= program.stop:
                with timings("checkpoint"):
                    recorder.save(state, {"env_step": host["step"]}, cloudpickle.dumps(host))
                last_save = time.time()
    host["envs"].close()
    return state, host["kept"]


# ================================================================================================
# 8. Offline trainer: jit(vmap over sweep members)(lax.scan over K gradient steps) per chunk
# ================================================================================================


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How an offline run trains. The fields without a default are method: a study states them."""

    num_steps: int  # gradient steps per member
    chunk_steps: int  # steps per compiled call; metrics are taken between chunks
    batch_size: int
    optimizer: Optimizer
    target_update_period: int  # steps between copies of the online network into the target
    probe_size: int  # states in the fixed probe batch (the paper's rank batch: 512)
    eval_every: int  # gradient steps between online evaluations (0: never)
    early_chunk_steps: int = 0  # if > 0, the first chunk is split into chunks this long, so that the
    #                             abrupt early srank collapse (phase 1) is resolved in the curves
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
    """One member of a sweep: its seed and learning rate, the typed values its rows carry in
    metrics.csv (``columns``, e.g. ``{"lr": 3e-4}``), and its other traced settings. The trainer
    reads ``target_update_period`` and ``data_size`` (train on the first ``data_size`` entries of
    the data order; None: the config's / all of it); a study's loss or gradient rule reads
    ``settings`` (e.g. a CURL weight). All of them are traced values, so members that differ in
    them are one compiled program."""

    seed: int
    learning_rate: float
    columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    target_update_period: int | None = None
    data_size: int | None = None
    settings: Mapping[str, float] = dataclasses.field(default_factory=dict)


def member_settings(members: Sequence[Member], cfg: TrainConfig, num_transitions: int) -> dict[str, Array]:
    """The members' traced settings as one pytree of stacked arrays, the chunk's argument."""
    stacked = {
        "data_size": jnp.asarray([m.data_size or num_transitions for m in members], jnp.int32),
        "target_update_period": jnp.asarray([m.target_update_period or cfg.target_update_period for m in members],
                                            jnp.int32),
    }
    for name in dict.fromkeys(k for m in members for k in m.settings):
        stacked[name] = jnp.asarray([m.settings[name] for m in members], jnp.float32)
    return stacked


@functools.lru_cache(maxsize=32)  # one compiled program per (network, loss, rule, shape): reruns skip the compile
def make_chunk_fn(net: nn.Module, loss: Loss, gradient: GradientRule, optimizer: str, batch_size: int,
                  steps: int) -> Callable:
    """Compiled ``(states, dataset, order, settings) -> (states, mean_loss, mean_q)``: ``steps``
    gradient steps for every member at once. Minibatch rows are drawn on device from
    ``order[:data_size]`` (the member's share of the data), so the dataset never leaves the device.
    Each step gathers its own minibatch. Gathering 100 steps' minibatches at once (a scan over
    blocks of steps) measured 1.2-1.5x for one member (bit-identical) but 0.76x for the 60-member
    sweep on one and on two devices (not bit-identical), side by side on a 2-core CPU: not kept.
    Remeasured by member count on two AMD EPYC devices (1, 2, 6, 10, 60 members): 1.11x, 1.01x,
    0.98x, 0.99x, 0.91x, so a gain for a lone member only, which no study trains.
    Unrolling the scan (``unroll=4``) gave the same bits at 1.04x for one member and 0.91x for the
    60-member sweep (one device, AMD EPYC, 2 cores): not kept either."""
    opt = make_optimizer(optimizer)

    def member_chunk(state: TrainState, ds: Dataset, order: Array, settings: dict):
        # All of the chunk's minibatch positions in one call: one large threefry call is far cheaper
        # on a CPU than `steps` small ones inside the loop.
        key, sample_key, loss_key = jax.random.split(state.key, 3)
        bound = settings["data_size"] if ds.size is None else jnp.minimum(settings["data_size"], ds.size)
        positions = jax.random.randint(sample_key, (steps, batch_size), 0, bound)
        loss_keys = jax.random.split(loss_key, steps)

        def step(state: TrainState, xs):
            pos, step_key = xs
            state, value, q_mean = learner_step(net.apply, opt, state, ds.batch(order[pos]), loss, settings,
                                                step_key, gradient)
            return state, (value, q_mean)

        state, (values, q) = jax.lax.scan(step, state, (positions, loss_keys))
        return state._replace(key=key), jnp.mean(values), jnp.mean(q)

    return jax.jit(jax.vmap(member_chunk, in_axes=(0, None, None, 0)), donate_argnums=0)


def probe_rows(ds: Dataset, size: int, seed: int = PROBE_SEED) -> np.ndarray:
    """The fixed probe batch (512 states in the paper), the same for every member and checkpoint."""
    rng = np.random.default_rng(seed)
    valid = np.asarray(ds.valid)
    return valid[rng.choice(len(valid), size=min(size, len(valid)), replace=False)]


def member_sharding(num_members: int):
    """Shards the sweep axis over every device, of every process, when it divides evenly (one device:
    a no-op; the trainer pads the members to a multiple, see ``member_padding``). A CPU is split
    into one device per core by the scripts (``--cpu-devices``). Several processes (hosts) join one
    run through ``jax.distributed`` (``--coordinator``, ``--num-processes``, ``--process-id``); the
    mesh then spans all of them."""
    devices = jax.devices()
    if len(devices) == 1 or num_members % len(devices):
        return None
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))


def member_padding(num_members: int) -> int:
    """How many extra members make ``num_members`` split evenly over the devices: 0 on one device
    or with fewer members than devices (padding those would only add work). The trainer fills the
    slots with copies of the last member and drops their results: 5 seeds on 2 devices train as
    3 + 3 members, in 3/5 of the time of 5 on one."""
    devices = jax.device_count()
    return 0 if devices == 1 or num_members < devices else -num_members % devices


# On a CPU, members with a large learner state (the MinAtar CNN's: ~2.6 MB of parameters, target
# network and Adam moments) train faster in small groups, one call per group and chunk, than all in
# one call: two members per device keep their state in cache for the whole chunk, where 24 per device
# stream it from memory at every step. 48 MinAtar members on 2 devices, each grouping timed beside
# one call of all 48 in one process: calls of 4 (2 per device) 1.43x and 1.53x the member-steps/s
# in two runs, of 6 1.40x, of 8 1.37x, of 2 (1 per device) 0.81x. The bsuite MLPs' state (~0.1 MB)
# fits either way: 60 of them gain nothing in groups (1.03x), so they keep one call. A device with
# its own memory hierarchy (a GPU) always trains all members in one call.
GROUP_ABOVE_BYTES = 1 << 20
"""A CPU trains members in groups when one member's learner state exceeds this many bytes."""
GROUP_PER_DEVICE = 2
"""Members per device in one call when grouped."""


def call_size(num_members: int, state_bytes: int) -> int:
    """How many members one compiled call trains, of ``num_members`` (already padded by
    ``member_padding``) whose learner state takes ``state_bytes`` each: all of them, except on a CPU
    with ``state_bytes`` over ``GROUP_ABOVE_BYTES`` (see there). A group is a multiple of the device
    count, so the last, shorter group still splits evenly over the devices."""
    if jax.devices()[0].platform != "cpu" or state_bytes <= GROUP_ABOVE_BYTES:
        return num_members
    return min(num_members, GROUP_PER_DEVICE * jax.device_count())


def configure_cpu_devices(count: int = 0) -> None:
    """Splits the CPU into ``count`` JAX devices (0: one per core), before JAX starts its backend.
    XLA runs a device's small kernels on one core, so one device leaves the second core of a 2-core
    machine mostly idle; two devices, with the members split over them, train ~2x the
    member-steps/s (``make bench``, the 60-member sweep: 2.0x on an Intel 2-core machine; 2.02x and
    1.74x in two runs on an AMD EPYC). Results are bit-for-bit
    reproducible for a given device count; another count changes the last bits (each device runs
    its own compiled program).

    XLA's CPU flags were tried on the trainer's programs and none is set: with
    ``--xla_cpu_multi_thread_eigen=false``, ``--xla_cpu_use_xnnpack=true`` with XNNPACK dot fusion
    or its greedy graph fusion, or the concurrency-optimised scheduler, one bsuite member and four
    MinAtar members on two devices compiled to the same programs (bit-identical states) at the same
    speed within noise; YNNPACK's dot fusion (``--xla_cpu_experimental_ynn_fusion_type=dot``) changed
    the bits and trained the MinAtar members at 0.92x (jaxlib 0.10.2, a 2-core AMD EPYC)."""
    jax.config.update("jax_num_cpu_devices", count or len(os.sched_getaffinity(0)))


def place(tree: PyTree, sharding) -> PyTree:
    """``tree`` on ``sharding``, from values every process holds in full (PRNG keys included)."""
    host = to_host(tree)

    def put(x, h):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jax.device_put(h, sharding), impl=jax.random.key_impl(x))
        return jax.device_put(h, sharding)

    return jax.tree_util.tree_map(put, tree, host)


def gathered(tree: PyTree) -> PyTree:
    """Every process's view of a (possibly multi-process) sharded pytree, as local arrays."""
    from jax.experimental import multihost_utils

    if all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)):
        return tree
    as_data = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    host = multihost_utils.process_allgather(jax.tree_util.tree_map(as_data, tree), tiled=True)
    like = jax.tree_util.tree_leaves(tree)
    keys = [jnp.issubdtype(x.dtype, jax.dtypes.prng_key) for x in like]
    leaves = [jax.random.wrap_key_data(jnp.asarray(h), impl=jax.random.key_impl(x)) if k else jnp.asarray(h)
              for x, h, k in zip(like, jax.tree_util.tree_leaves(host), keys)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), leaves)


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0 of a multi-process run)."""
    return jax.process_index() == 0


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    rows: list[dict]  # tidy metrics rows
    diverged: dict[int, int]  # member index -> step at which it diverged


def train_offline(
    net: nn.Module, ds: "Dataset | DQNReplayStream", loss: Loss, members: Sequence[Member], cfg: TrainConfig, *,
    gradient: GradientRule = plain_gradient, order: np.ndarray | None = None,
    evaluate: Callable[[nn.Module, PyTree], dict[str, np.ndarray]] | None = None,
    columns: Mapping[str, Any] | None = None, checkpoints: Path | None = None, progress: bool = True,
    timings: "Timings | None" = None,
) -> TrainResult:
    """Trains every member on ``ds`` with ``loss`` (its gradient by ``gradient``) and records metrics.

    Rows carry ``columns`` (e.g. study, env, agent), the member's own columns and seed, then step,
    metric, value: loss and q_mean after every chunk; srank, dead_units, dormant_frac and q_probe
    on the fixed probe batch at the start and after every chunk; and at the start and every
    ``eval_every`` steps what ``evaluate(net, params)`` returns per member (e.g. return). A member
    whose loss or parameters become non-finite is reported once and its later rows carry NaN; the
    others go on.

    With ``checkpoints`` the run resumes from its last checkpoint, and a finished run is not redone.
    The checkpoint's identity covers everything that decides the numbers (``run_identity``): the
    traced program of a chunk (network, loss, gradient rule, optimizer, every constant in them),
    the dataset, the order, the probe batch, the members' seeds and settings, the schedule and the
    evaluation. Change any of them and the run starts afresh.

    ``ds`` may be a DQNReplayStream: the data resident on the device then change every
    ``swap_every`` steps (between chunks), with the probe batch fixed from the first resident set.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    timings = timings or Timings()
    plan = chunk_plan(cfg)
    stream = ds if isinstance(ds, DQNReplayStream) else None
    if stream is not None:
        if order is not None:
            raise ValueError("a DQN Replay stream trains on all of its resident data: no order (no data subsets)")
        with timings("collect"):
            ds = stream.at(0)
    resident = ds
    ident = stream.ident if stream is not None else ds.ident
    ds = ds.replace(ident="")  # the identity is not part of the program: datasets of one shape share it
    order = np.asarray(ds.valid) if order is None else np.asarray(order)
    # Copies of the last member fill the last device's slots (member_padding); only the first
    # ``real`` members' results are recorded or returned.
    real = len(members)
    trained = list(members) + [members[-1]] * member_padding(real)
    settings = member_settings(trained, cfg, len(order))
    order_device = jnp.asarray(order, jnp.int32)
    rows_probe = probe_rows(ds, cfg.probe_size)
    probe = ds.stacked_obs(jnp.asarray(rows_probe))
    state = init_learners(net, probe[:1], seed_keys(m.seed for m in trained), [m.learning_rate for m in trained],
                          cfg.optimizer, loss)
    settings_digest = digest(*(np.asarray(v) for v in jax.tree_util.tree_leaves(settings)), sorted(settings))
    sharding = member_sharding(len(trained))
    # The members train in groups of ``size`` consecutive members (call_size: on a CPU, when a
    # member's state is large), each group its own placed state and settings; ``state``, all of
    # them joined, is what is probed, evaluated, saved and returned.
    size = call_size(len(trained), sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) // len(trained))
    bounds = [(a, min(a + size, len(trained))) for a in range(0, len(trained), size)]
    group_settings = [jax.tree_util.tree_map(lambda x: x[a:b], settings) for a, b in bounds]
    if sharding is not None:  # members split over the devices; the data and the probe on every one
        replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        state = place(state, sharding)
        group_settings = [place(s, member_sharding(b - a)) for s, (a, b) in zip(group_settings, bounds)]
        ds, order_device, probe = place((ds, order_device, probe), replicated)
    split, join = member_groups(bounds, sharding)
    groups = split(state)
    chunk_fns = {n: make_chunk_fn(net, loss, gradient, cfg.optimizer, cfg.batch_size, n) for n in sorted(set(plan))}
    probe_fn = make_probe_fn(net, None if sharding is None else sharding.mesh)
    columns = dict(columns or {})
    member_columns = [{**columns, **m.columns, "seed": m.seed} for m in members]
    # The call's name in meta.json's ``trainings``: its progress bar's, with the member columns every
    # member shares (lr_sweep's batch-256 sweep is then told from its batch-32 one).
    shared = {k: v for k, v in members[0].columns.items() if all(k in m.columns and m.columns[k] == v for m in members)}
    setting = lambda k, v: f"{k}={v:g}" if isinstance(v, (float, np.floating)) else f"{k}={v}"
    label = " ".join([*(str(v) for v in columns.values()), *(setting(k, v) for k, v in shared.items())])

    recorder = Recorder(None, {}, member_columns, cfg.checkpoint_seconds)
    if checkpoints is not None:
        identity = run_identity(
            programs=[str(fn.trace(groups[0], ds, order_device, group_settings[0]).jaxpr) for fn in chunk_fns.values()]
            + [str(probe_fn.trace(state.params, probe).jaxpr)],
            dataset=ident, order=digest(order), probe=digest(rows_probe),
            members=[[m.seed, m.learning_rate] for m in members],
            settings=settings_digest,
            columns=member_columns, plan=plan, eval_every=cfg.eval_every, evaluate=describe(evaluate))
        recorder = Recorder(Path(checkpoints) / f"{columns.get('agent', 'run')}_{identity}",
                            {"columns": columns, "train": dataclasses.asdict(cfg)}, member_columns,
                            cfg.checkpoint_seconds)
    ends = np.cumsum(plan)

    def measure(step: int, chunk_loss=None, q_mean=None) -> dict[str, np.ndarray]:
        if chunk_loss is not None:
            finite = to_host(gathered(params_finite(state.params)))[:real]
            recorder.check_finite(step, np.isfinite(chunk_loss) & finite)
            recorder.record(step, "loss", chunk_loss)
            recorder.record(step, "q_mean", q_mean)
        with timings("probe"):
            probed = {k: v[:real] for k, v in to_host(gathered(probe_fn(state.params, probe))).items()}
        for name, v in probed.items():
            if name != "units" or step == 0:  # the layer's width, once
                recorder.record(step, name, v)
        if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0:
            with timings("evaluate"):
                for name, v in evaluate(net, unsharded(state.params, real)).items():
                    recorder.record(step, name, v)
        return probed

    resumed = recorder.resume()
    start_chunk = 0
    if resumed is None:
        measure(0)
    else:
        state = restore_like(state, resumed[0])
        groups = split(state)
        start_chunk = resumed[1]["chunks_done"]
        timings.note_resumed(recorder, f"{start_chunk} of {len(plan)} chunks")
    last_save = time.time()
    bar = tqdm(range(start_chunk, len(plan)), initial=start_chunk, total=len(plan), disable=not progress,
               desc=" ".join(str(v) for v in columns.values()), unit="chunk", dynamic_ncols=True)
    for chunk in bar:
        fn = chunk_fns[plan[chunk]]
        if stream is not None and stream.at(int(ends[chunk] - plan[chunk])) is not resident:
            with timings("collect"):  # a swap between chunks: the next resident checkpoints
                resident = stream.at(int(ends[chunk] - plan[chunk]))
                ds, order_device = resident.replace(ident=""), resident.valid
                if sharding is not None:
                    ds, order_device = place((ds, order_device), replicated)
        with timings("train" if chunk > start_chunk and plan[chunk] == plan[chunk - 1] else "compile"):
            outputs = []
            for i, group in enumerate(groups):
                groups[i], *losses = fn(group, ds, order_device, group_settings[i])
                outputs.append(losses)
            state = join(groups)
            chunk_loss, q_mean = (np.concatenate(x)[:real] for x in zip(*to_host(gathered(outputs))))
        probed = measure(int(ends[chunk]), chunk_loss, q_mean)
        alive = recorder.alive()
        if alive:
            bar.set_postfix(srank=f"{np.mean(probed['srank'][alive]):.1f}", loss=f"{np.nanmean(chunk_loss[alive]):.3g}",
                            refresh=False)
        if recorder.due(last_save) or chunk + 1 == len(plan):
            with timings("checkpoint"):
                recorder.save(state, {"chunks_done": chunk + 1})
            last_save = time.time()
    bar.close()
    result = TrainResult(unsharded(state, real), recorder.finish(), dict(recorder.diverged))
    timings.note_training(label, time.perf_counter() - started)
    return result


def member_groups(bounds: list[tuple[int, int]], sharding) -> tuple[Callable, Callable]:
    """``(split, join)`` between a stacked pytree of all members (placed on ``sharding``) and the
    list of its groups of members ``bounds[i] = (start, stop)``, each placed as ``member_sharding``
    places that many members. With one group both return what they are given."""
    if len(bounds) == 1:
        return (lambda tree: [tree]), (lambda groups: groups[0])

    def split(tree: PyTree) -> list[PyTree]:
        parts = [jax.tree_util.tree_map(lambda x: x[a:b], tree) for a, b in bounds]
        return [part if member_sharding(b - a) is None else place(part, member_sharding(b - a))
                for part, (a, b) in zip(parts, bounds)]

    concatenate = lambda groups: jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *groups)
    join = jax.jit(concatenate) if sharding is None else jax.jit(concatenate, out_shardings=sharding)
    return split, join


def unsharded(tree: PyTree, members: int) -> PyTree:
    """The first ``members`` members of a (possibly sharded) stacked pytree, on one local device:
    what evaluation and the scripts compute on (a sharded input would make their programs SPMD)."""
    tree = gathered(tree)
    leaves = jax.tree_util.tree_leaves(tree)
    if all(len(x.sharding.device_set) == 1 and x.shape[0] == members for x in leaves):
        return tree  # one device, no padding: already so
    device = jax.local_devices()[0]

    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))[:members]
            return jax.random.wrap_key_data(jax.device_put(data, device), impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x)[:members], device)

    return jax.tree_util.tree_map(one, tree)


def params_finite(params: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree_util.tree_leaves(params)]
    return jnp.all(jnp.stack(leaves), axis=0)


def run_identity(**parts) -> str:
    """The digest that names a checkpoint: every part (traced programs as jaxpr text) and the
    versions of the packages that compute or simulate anything."""
    return digest(parts, package_versions())


def describe(fn: Any) -> str:
    """A stable description of a function-like value for an identity: a dataclass's repr (every
    setting), else the function's module and qualified name."""
    if fn is None:
        return "none"
    if dataclasses.is_dataclass(fn):
        return repr(fn)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


# ================================================================================================
# 9. Evaluation
# ================================================================================================


def evaluate_policies(
    net: nn.Module, params: PyTree, env_id: str, num_episodes: int, seed: int, *, epsilon: float = 0.0,
    obs_transform: Callable[[Array, Array], Array] | None = None, history: int = 1, max_steps: int = 27_000,
    gamma: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Plays ``num_episodes`` episodes for every member of the stacked ``params`` at once (one env
    per member and episode). Returns the (members, episodes) undiscounted returns and, if ``gamma``
    is given, each member's value error: |Q(s, a) - G| averaged over every state its episodes
    visited, where a is the action taken and G the discounted return that followed (an episode
    cut off by ``max_steps`` counts the rewards it got).

    Actions are greedy on Q (or logits) with probability 1 - epsilon. ``obs_transform(key, obs)``
    perturbs observations before the network sees them (the robustness study): a plain callable is
    compiled in as a constant, a pytree (say a ``flax.struct.dataclass``) is an argument of the
    compiled policy, so transforms that differ only in its leaves share one program; ``history`` > 1
    feeds the last ``history`` observations (zero before the episode start) to recurrent agents.
    """
    leaf = jax.tree_util.tree_leaves(params)[0]
    members = leaf.shape[0]
    env = make_env(env_id, members * num_episodes, seed)
    key = jax.random.key(seed)
    devices = list(leaf.sharding.device_set) if isinstance(leaf, jax.Array) else []
    if len(devices) == 1:  # committed there, as the keys act returns are: else the steps after the
        key = jax.device_put(key, devices[0])  # first would compile the policy a second time
    act = _act_fn(net, members, num_episodes, epsilon)
    if obs_transform is not None and jax.tree_util.all_leaves([obs_transform]):
        obs_transform = jax.tree_util.Partial(obs_transform)  # a plain callable: a constant of the program

    obs = env.reset()
    stack = HistoryStack(obs, history) if history > 1 and env.frames_stacked == 1 else None
    net_obs = stack.buffer if stack else obs
    returns = np.zeros(env.num_envs)
    running = np.ones(env.num_envs, bool)
    taken, rewards, alive = [], [], []  # per step, for the value error
    for _ in range(max_steps):
        actions, q_taken, key = act(params, net_obs, key, obs_transform)
        actions, q_taken = jax.device_get((actions, q_taken))  # one transfer for both
        obs, reward, terminated, truncated = env.step(actions, active=running)
        if gamma is not None:
            taken.append(q_taken), rewards.append(reward * running), alive.append(running.copy())
        returns += reward * running
        running &= ~(terminated | truncated)
        if not running.any():
            break
        net_obs = stack.push(obs, terminated | truncated) if stack else obs
    env.close()
    value_error = None
    if gamma is not None:
        future = np.zeros(env.num_envs)
        errors = np.zeros(env.num_envs)
        for q, r, a in zip(reversed(taken), reversed(rewards), reversed(alive)):
            future = r + gamma * future  # rewards after an episode's end are zero (masked above)
            errors += a * np.abs(q - future)
        visits = np.sum(alive, axis=0).reshape(members, num_episodes).sum(axis=1)
        value_error = errors.reshape(members, num_episodes).sum(axis=1) / np.maximum(visits, 1)
    return returns.reshape(members, num_episodes), value_error


@functools.lru_cache(maxsize=64)  # repeated evaluations of a run reuse one compiled policy
def _act_fn(net: nn.Module, members: int, num_episodes: int, epsilon: float):
    # The transform is an argument, not a constant: a transform that is a pytree (the robustness
    # study's perturbations: kind static, level a leaf) compiles once for all its levels.
    # The key is split inside the program, as the loop would split it outside: the same keys, one
    # dispatch a step fewer (an eager split cost ~70 us of a ~500 us mountain_car step, 160 envs).
    @jax.jit
    def act(params, obs, key, obs_transform):
        key, step_key = jax.random.split(key)
        transform_key, explore_key, random_key = jax.random.split(step_key, 3)
        if obs_transform is not None:
            obs = obs_transform(transform_key, obs)
        obs = obs.reshape(members, num_episodes, *obs.shape[1:])
        q = jax.vmap(lambda p, o: net.apply(p, o)[0])(params, obs).reshape(members * num_episodes, -1)
        actions = jnp.argmax(q, axis=-1)
        if epsilon > 0:  # a greedy policy draws nothing (the draws cost ~20 us of a ~185 us policy call)
            explore = jax.random.uniform(explore_key, actions.shape) < epsilon
            actions = jnp.where(explore, jax.random.randint(random_key, actions.shape, 0, q.shape[-1]), actions)
        return actions, jnp.take_along_axis(q, actions[:, None], axis=-1)[:, 0], key

    return act


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Online evaluation of every member at once: ``episodes`` episodes per member with the greedy
    policy (random actions with probability ``epsilon``), environments seeded by ``seed``; a
    recurrent agent reads the last ``history`` observations; ``transform(key, obs)`` perturbs what
    the network sees (the robustness study). ``evaluator(net, params)`` returns ``{"return": mean
    undiscounted return per member}`` and, with ``gamma``, ``"value_error"`` (see evaluate_policies)."""

    env_id: str
    episodes: int
    seed: int = EVAL_SEED
    epsilon: float = 0.0
    history: int = 1
    transform: Callable[[Array, Array], Array] | None = None
    gamma: float | None = None

    def __call__(self, net: nn.Module, params: PyTree) -> dict[str, np.ndarray]:
        returns, value_error = evaluate_policies(net, params, self.env_id, self.episodes, self.seed,
                                                 epsilon=self.epsilon, history=self.history,
                                                 obs_transform=self.transform, gamma=self.gamma)
        return {"return": returns.mean(axis=1)} | ({} if value_error is None else {"value_error": value_error})


# ---- observation perturbations: jitted, batched, applied through evaluate_policies' hook ---------


def image_axes(env_id: str) -> tuple[int, int]:
    """Image axes of a batch of observations: stacked Atari frames (N, 4, 84, 84) are NCHW; MinAtar
    (N, 10, 10, C) is NHWC."""
    return (2, 3) if env_id.startswith("atari/") else (1, 2)


def random_shift(key: Array, obs: Array, pad: int | Array, axes: tuple[int, int] = (1, 2)) -> Array:
    """DrQ's random shift (Yarats et al. 2020): pad each image by ``pad`` pixels replicating its edges,
    then crop a random window of the original size. Per-sample offsets; shape and dtype kept;
    the identity when pad is 0. Written as a gather of clipped indices (cropping the edge-padded
    image at offset o reads pixel clip(i + o - pad)), so ``pad`` may be traced: one compiled
    program serves every level of the robustness study."""
    if isinstance(pad, int) and pad == 0:
        return obs
    offsets = jax.random.randint(key, (obs.shape[0], 2), 0, 2 * pad + 1) - pad
    rows = jnp.clip(jnp.arange(obs.shape[axes[0]]) + offsets[:, :1], 0, obs.shape[axes[0]] - 1)
    cols = jnp.clip(jnp.arange(obs.shape[axes[1]]) + offsets[:, 1:], 0, obs.shape[axes[1]] - 1)

    def crop(image, r, c):
        return jnp.take(jnp.take(image, r, axis=axes[0] - 1, mode="clip"), c, axis=axes[1] - 1, mode="clip")

    return jax.vmap(crop)(obs, rows, cols)



# ================================================================================================
# 10. Results: the recorder (rows, divergence, checkpoints), metrics.csv, meta.json
# ================================================================================================


def to_host(tree: PyTree) -> PyTree:
    """A device pytree as numpy arrays, PRNG keys as their raw key data (picklable)."""
    return jax.device_get(jax.tree_util.tree_map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree))


def restore_like(like: PyTree, host: PyTree) -> PyTree:
    """``to_host``'s inverse: ``host``'s arrays in ``like``'s structure, dtypes, keys and placement."""
    like_leaves, treedef = jax.tree_util.tree_flatten(like)
    host_leaves = jax.tree_util.tree_leaves(host)
    if len(host_leaves) != len(like_leaves):
        raise ValueError("checkpoint does not match the run's state")

    def restore(x, h):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jax.device_put(np.asarray(h), x.sharding), impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(h, dtype=x.dtype), x.sharding)

    return jax.tree_util.tree_unflatten(treedef, [restore(x, h) for x, h in zip(like_leaves, host_leaves)])


class Recorder:
    """A run's metric rows, its diverged members and its checkpoint.

    ``columns[m]`` is what every row of member m carries (study, env, agent, seed, settings);
    ``record(step, metric, values)`` adds one row per member, NaN for a member that has diverged.

    The checkpoint is a directory. ``rows.jsonl`` is append-only: a save appends the rows recorded
    since the last one. ``state.pkl`` is replaced atomically: the trainer's state, how many rows
    are committed, the diverged members and the trainer's progress. So a save costs the same at
    any point of a run, and a kill at any moment (even between the two writes) loses at most
    the work since the last save: ``resume`` cuts the log back to the committed rows.

    Each save also records the wall seconds the training has taken up to it, over every run that
    worked on it, so a run that resumes it can say what its earlier runs spent (``earlier_seconds``;
    None for a checkpoint written before the seconds were recorded)."""

    def __init__(self, directory: Path | None, about: Mapping, columns: Sequence[Mapping], checkpoint_seconds: float):
        self.directory, self.columns, self.checkpoint_seconds = directory, list(columns), checkpoint_seconds
        self.started = time.perf_counter()
        self.earlier_seconds: float | None = 0.0
        self.rows: list[dict] = []
        self.diverged: dict[int, int] = {}
        self.saved_rows = 0
        if directory is not None and is_main_process():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(directory / "identity.json",
                         lambda f: f.write(json.dumps(jsonable(about), indent=1, default=str).encode()))

    def record(self, step: int, metric: str, values) -> None:
        values = np.asarray(values, np.float64).reshape(-1)
        for m, cols in enumerate(self.columns):
            v = np.nan if m in self.diverged and metric != "diverged" else float(values[m])
            self.rows.append({**cols, "step": int(step), "metric": metric, "value": v})

    def check_finite(self, step: int, finite: np.ndarray) -> None:
        from tqdm.auto import tqdm

        for m in np.flatnonzero(~np.asarray(finite)):
            if int(m) not in self.diverged:
                self.diverged[int(m)] = int(step)
                tqdm.write(f"warning: {describe_columns(self.columns[m])} diverged (non-finite loss or parameters) "
                           f"by step {step}; its later metrics are NaN", file=sys.stderr)

    def alive(self) -> list[int]:
        return [m for m in range(len(self.columns)) if m not in self.diverged]

    def finish(self) -> list[dict]:
        """The rows, with one ``diverged`` row (value 1, at the step it diverged) per diverged member."""
        return self.rows + [{**self.columns[m], "step": step, "metric": "diverged", "value": 1.0}
                            for m, step in sorted(self.diverged.items())]

    def due(self, last_save: float) -> bool:
        return self.directory is not None and time.time() - last_save > self.checkpoint_seconds

    def save(self, state: PyTree, progress: Mapping, host: bytes | None = None) -> None:
        """Checkpoints the trainer's ``state`` (a device pytree), its ``progress`` (a small dict, shown
        when a run resumes) and, for an online loop, its pickled ``host`` side. In a multi-process
        run every process gathers the state, and process 0 writes."""
        if self.directory is None:
            return
        state = gathered(state)
        if not is_main_process():
            return
        new = self.rows[self.saved_rows:]
        with open(self.directory / "rows.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in new))
            f.flush()
            os.fsync(f.fileno())
        self.saved_rows = len(self.rows)
        import pickle

        seconds = None if self.earlier_seconds is None else \
            round(self.earlier_seconds + time.perf_counter() - self.started, 1)
        payload = {"state": to_host(state), "rows": self.saved_rows, "diverged": self.diverged,
                   "progress": {**progress, "seconds": seconds}, "host": host}
        atomic_write(self.directory / "state.pkl", lambda f: pickle.dump(payload, f, protocol=5), ".pkl")

    def resume(self) -> tuple[PyTree, Mapping, bytes | None] | None:
        """(state on the host, progress, host side) of the last save, with the rows and divergences
        it had; None when there is no readable checkpoint (an unreadable one is reported and ignored)."""
        if self.directory is None or not (self.directory / "state.pkl").exists():
            return None
        import pickle

        try:
            with open(self.directory / "state.pkl", "rb") as f:
                payload = pickle.load(f)
            with open(self.directory / "rows.jsonl", "rb") as f:
                lines = f.read().split(b"\n")[: payload["rows"]]
            if len(lines) < payload["rows"]:
                raise ValueError(f"rows.jsonl has {len(lines)} of {payload['rows']} committed rows")
            rows = [json.loads(line) for line in lines]
        except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
            print(f"warning: checkpoint {self.directory} is unreadable ({e}); starting over", file=sys.stderr)
            for name in ("state.pkl", "rows.jsonl"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / name).unlink()
            return None
        # Drop rows a killed save appended after its last commit.
        with open(self.directory / "rows.jsonl", "r+b") as f:
            f.truncate(sum(len(line) + 1 for line in lines))
        self.rows, self.saved_rows = rows, len(rows)
        self.diverged = {int(k): v for k, v in payload["diverged"].items()}
        self.earlier_seconds = payload["progress"].get("seconds")
        print(f"resuming from {self.directory} ({payload['progress']})", file=sys.stderr)
        return payload["state"], payload["progress"], payload["host"]


def describe_columns(columns: Mapping) -> str:
    return ", ".join(f"{k} {v}" for k, v in columns.items())


class Timings:
    """Wall seconds per phase of a run (compile, train, probe, evaluate, collect, checkpoint, ...):
    ``with timings("train"): ...``. Written to meta.json, so a run says where its time went, and
    which of its trainings continued from a checkpoint, and the seconds those had taken in the
    earlier runs (not in this run's). ``trainings`` is the wall time spent in each trainer call
    (compile, training, probes and evaluation; calls with one label add up), so a run also says which
    of its sub-studies took its time."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.trainings: dict[str, float] = {}  # a trainer call's label -> this run's wall seconds in it
        self.resumed: dict[str, str] = {}  # checkpoint directory -> how far it had got
        self.resumed_seconds: dict[str, float | None] = {}  # -> its wall seconds then (None: not recorded)

    def note_resumed(self, recorder: "Recorder", how_far: str) -> None:
        self.resumed[recorder.directory.name] = how_far
        self.resumed_seconds[recorder.directory.name] = recorder.earlier_seconds

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def note_training(self, label: str, seconds: float) -> None:
        self.trainings[label] = self.trainings.get(label, 0.0) + seconds

    def summary(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}

    def meta(self) -> dict[str, Any]:
        """What meta.json records: the seconds per phase and per trainer call, and the trainings
        resumed from checkpoints with the seconds they had taken before."""
        resumed = {"resumed": self.resumed, "resumed_seconds": self.resumed_seconds} if self.resumed else {}
        trainings = {"trainings": {k: round(v, 1) for k, v in self.trainings.items()}} if self.trainings else {}
        return {"seconds": self.summary(), **trainings, **resumed}


FIXED_COLUMNS = ("study", "env", "agent", "seed")  # first in metrics.csv; the swept settings follow
VALUE_COLUMNS = ("step", "metric", "value")  # last


def metrics_csv(rows: Iterable[dict]) -> str:
    """Tidy rows as CSV text: study, env, agent, seed, one typed column per swept setting (empty
    where a row has none), step, metric, value. Floats are written exactly (repr), so a setting
    read back compares equal to the value that was swept."""
    import csv

    rows = list(rows)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    header = [k for k in FIXED_COLUMNS if k in keys] + [k for k in keys if k not in FIXED_COLUMNS + VALUE_COLUMNS] \
        + list(VALUE_COLUMNS)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    cell = lambda v: "" if v is None else repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)
    writer.writerows([cell(r.get(k)) for k in header] for r in rows)
    return buf.getvalue()


def write_metrics(out: Path, rows: Iterable[dict], name: str = "metrics.csv") -> Path:
    """Writes ``metrics_csv(rows)`` to ``out/name`` atomically (gzipped if the name ends in .gz);
    in a multi-process run, process 0 writes."""
    path = Path(out) / name
    if not is_main_process():
        return path
    data = metrics_csv(rows).encode()
    if name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write(path, lambda f: f.write(data), ".csv")
    return path


class Metrics:
    """metrics.csv (or .csv.gz) in memory, with the selections plots and claims need. Settings
    columns come back typed: integers as int, other numbers as float, text as str, blanks as None;
    ``select(lr=3e-4)`` compares values, never labels."""

    def __init__(self, path: Path | io.StringIO):
        import pandas as pd

        if not isinstance(path, io.StringIO) and not Path(path).exists():
            raise DatasetError(f"{path} does not exist: run the script without --plot-only first")
        self.run_dir = None if isinstance(path, io.StringIO) else Path(path).parent  # the run's other files
        # Every cell but seed and step is read as text: settings are typed cell by cell (_typed), as
        # they were written, since pandas infers types chunk by chunk and can type one column two
        # ways; values are parsed by Python's float, which round-trips the repr they were written as.
        frame = pd.read_csv(path, dtype=collections.defaultdict(lambda: str, seed="int64", step="int64"),
                            keep_default_na=False)
        self.columns = [c for c in frame.columns if c not in VALUE_COLUMNS]
        self.data = {c: np.asarray([_typed(v) for v in frame[c].tolist()], dtype=object) for c in self.columns}
        self.data["seed"] = frame["seed"].to_numpy(np.int64)
        self.step = frame["step"].to_numpy(np.int64)
        self.metric = frame["metric"].to_numpy(object)
        self.value = frame["value"].to_numpy(object).astype(np.float64)
        self._cache: dict[tuple, np.ndarray] = {}

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> "Metrics":
        """The Metrics of rows as ``write_metrics`` would write and read them (for tests)."""
        return cls(io.StringIO(metrics_csv(rows)))

    def __len__(self) -> int:
        return len(self.value)

    def mask(self, **where) -> np.ndarray:
        """Indices of the rows whose columns equal ``where`` (metric included)."""
        key = tuple(sorted(where.items(), key=lambda kv: kv[0]))
        if key not in self._cache:  # plots and claims ask for the same selections many times
            keep = np.ones(len(self.value), bool)
            for k, v in where.items():
                column = self.metric if k == "metric" else self.step if k == "step" else self.data.get(k)
                if column is None:
                    keep[:] = False
                    continue
                keep &= np.asarray([x is None for x in column]) if v is None else (column == v)
            self._cache[key] = np.flatnonzero(keep)
        return self._cache[key]

    def has(self, **where) -> bool:
        return len(self.mask(**where)) > 0

    def values(self, key: str, **where) -> list:
        """Distinct values of column ``key`` among the rows matching ``where``, in first-seen order."""
        idx = self.mask(**where)
        column = self.metric if key == "metric" else self.step if key == "step" else self.data[key]
        return list(dict.fromkeys(column[idx].tolist()))

    def steps(self, **where) -> np.ndarray:
        return np.unique(self.step[self.mask(**where)])

    def curves(self, **where) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values[seed, step]) for rows matching ``where`` (which should fix everything but
        seed and step); a missing point is NaN."""
        idx = self.mask(**where)
        steps, seeds = np.unique(self.step[idx]), np.unique(self.data["seed"][idx])
        grid = np.full((len(seeds), len(steps)), np.nan)
        grid[np.searchsorted(seeds, self.data["seed"][idx]), np.searchsorted(steps, self.step[idx])] = self.value[idx]
        return steps, grid

    def at_step(self, step: int, **where) -> np.ndarray:
        """The per-seed values at ``step`` of the rows matching ``where`` (NaN where missing)."""
        steps, grid = self.curves(**where)
        hit = np.flatnonzero(steps == step)
        return grid[:, hit[0]] if len(hit) else np.full(grid.shape[0], np.nan)

    def last(self, **where) -> np.ndarray:
        """The per-seed value at the last recorded step of the matching rows."""
        return self.curves(**where)[1][:, -1]


def _typed(v: Any) -> Any:
    """A CSV cell as the value it was written from (see write_metrics)."""
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    if v == "":
        return None
    for parse in (int, float):
        try:
            return parse(v)
        except ValueError:
            pass
    return v


def package_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "bsuite", "minatar", "ale-py")}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from HEAD (None outside a git checkout): such a run is not
    reproducible from its commit alone."""
    try:
        return bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                                   capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def machine_description() -> str:
    """The machine a run or a benchmark ran on: architecture, CPU model, widest vector instruction
    set and core count, e.g. "x86_64, AMD EPYC, AVX-512, 2 cores". Run times are comparable only on
    one CPU type: the same 2-core study took 1.0-1.4x as long on an AMD EPYC with AVX2 (176-180
    GFLOP/s float32 matmul peak) as on an Intel machine (210). The instruction set is named because
    XLA's CPU kernels differ with it, so a run repeats bit for bit only on the same one: "AMD EPYC"
    names machines with AVX2 and with AVX-512 alike."""
    model, flags = "", set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
        flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    except OSError:
        pass
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "")
    return ", ".join(part for part in (platform.machine(), model or platform.processor(), isa,
                                       f"{os.cpu_count()} cores") if part)


def write_meta(out: Path, preset: str, config: Any, wall_seconds: float, source: Mapping[str, Any],
               extra: dict | None = None) -> None:
    """meta.json: what a run was (preset, config, command, ``source``: the code's commit as the run
    started) and where its time went."""
    meta = {
        "preset": preset, "config": jsonable(config), "argv": sys.argv, **source,
        "wall_seconds": round(wall_seconds, 1), "device": str(jax.devices()[0]), "num_devices": jax.device_count(),
        "platform": platform.platform(), "machine": machine_description(),
        "python": platform.python_version(), "versions": package_versions(), **(extra or {}),
    }
    (Path(out) / "meta.json").write_text(json.dumps(meta, indent=2))


def jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


# ================================================================================================
# 11. Claims: the paper's statement, a per-environment statistic with seed-level uncertainty, a rule
#     stated before the data, and a verdict
# ================================================================================================

Verdict = Literal["held", "not held", "inconclusive", "not testable here"]
ALPHA = 0.05  # one-sided significance level of every seed-level test
MIN_INTERVAL_SEEDS = 4  # an interval-based verdict (two_sided) needs at least this many seeds
STRONG_CORRELATION = 0.5  # a "strong" correlation: |rho| >= 0.5 (Cohen's large effect), tested against that bound
FINAL_FRACTION = 0.1  # "final": the mean over the points recorded in the last 10% of a run


@dataclasses.dataclass(frozen=True)
class Evidence:
    """One environment's statistic: its value (the mean over seeds of a per-seed statistic, unless
    the claim says otherwise), a 95% interval, the p-value of the rule's test, the seeds that went
    in, and the verdict with, where needed, its reason."""

    env: str
    verdict: Verdict
    value: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    p: float = float("nan")
    n: int = 0
    note: str = ""

    def text(self) -> str:
        if self.verdict == "not testable here":
            return f"{short_env(self.env)}: not testable ({self.note})"
        parts = [f"{self.value:.3g}"]
        if np.isfinite(self.low):
            parts.append(f"[{self.low:.3g}, {self.high:.3g}]")
        if np.isfinite(self.p):
            parts.append(f"p={self.p:.3g}")
        if self.n:
            parts.append(f"n={self.n}")
        return f"{short_env(self.env)}: {' '.join(parts)}{f' ({self.note})' if self.note else ''} -> {self.verdict}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of the paper and the evidence for it at this scale."""

    id: str
    paper: str  # the paper's statement, quoted or closely paraphrased, with its section or figure
    statistic: str  # what is computed per environment, and its uncertainty
    rule: str  # the decision rule, stated before the data
    evidence: tuple[Evidence, ...]
    verdict: Verdict = "not testable here"
    summary: str = ""

    def __post_init__(self):
        verdict, summary = overall(self.evidence)
        object.__setattr__(self, "verdict", verdict)
        object.__setattr__(self, "summary", summary)

    def on(self, env: str, width: int = 64) -> str:
        """The evidence for ``env`` as a figure prints it ("claim: value [interval] p n -> verdict",
        wrapped at ``width``), so a figure's annotation is the claims table's, not a statistic of its own;
        "claim: not computed here" for an environment the claim has no evidence for."""
        import textwrap

        e = next((e for e in self.evidence if e.env == env), None)
        return textwrap.fill("claim: " + (e.text().split(": ", 1)[1] if e else "not computed here"), width)


def overall(evidence: Sequence[Evidence]) -> tuple[Verdict, str]:
    """The overall verdict: held if held in most testable environments and not held in none; not
    held if not held in most and held in none; not testable if no environment is; else
    inconclusive. The summary says the counts."""
    testable = [e for e in evidence if e.verdict != "not testable here"]
    if not testable:
        return "not testable here", "not testable in any environment"
    count = {v: sum(e.verdict == v for e in testable) for v in ("held", "not held", "inconclusive")}
    summary = f"held in {count['held']} of {len(testable)} testable environment{'s' if len(testable) > 1 else ''}"
    extra = [f"{count[v]} {v}" for v in ("not held", "inconclusive") if count[v]]
    untestable = len(evidence) - len(testable)
    if untestable:
        extra.append(f"{untestable} not testable")
    summary += f" ({', '.join(extra)})" if extra else ""
    if count["held"] > len(testable) / 2 and not count["not held"]:
        return "held", summary
    if count["not held"] > len(testable) / 2 and not count["held"]:
        return "not held", summary
    return "inconclusive", summary


@dataclasses.dataclass(frozen=True)
class SeedTest:
    """The across-seed test of a per-seed statistic: its mean, a 95% Student-t interval of the
    mean, and the exact sign-flip (permutation) p-values of "mean > null" and "mean < null"."""

    mean: float
    low: float
    high: float
    p_greater: float
    p_less: float
    n: int


def seed_test(values: Sequence[float], null: float = 0.0) -> SeedTest:
    """Tests a per-seed statistic (one value per seed; NaN dropped) against ``null``. The seeds are
    the units of replication: the sign-flip test is exact (all 2^n flips for n <= 16), so with 5
    seeds the smallest one-sided p is 1/32 (every seed on the claimed side), and with 2 seeds 1/4
    (no verdict can be reached). The interval is Student's t, mean +- t(0.975, n-1) s / sqrt(n): a
    percentile bootstrap over 4 or 5 values is about 0.6 times as wide and covers the mean far less
    often than 95%, which the rules that decide by the interval (two_sided) cannot afford."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return SeedTest(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0)
    d = x - null
    mean = float(np.mean(x))
    if len(x) == 1 or np.all(d == d[0]):
        # A constant difference: every flip ties or reverses it; the interval is the value itself.
        p = 1.0 / 2 ** len(x) if d[0] != 0 else 1.0
        return SeedTest(mean, mean, mean, p if d[0] > 0 else 1.0, p if d[0] < 0 else 1.0, len(x))
    flips = dict(permutation_type="samples", n_resamples=np.inf if len(x) <= 16 else 20_000, random_state=0)
    p_greater = stats.permutation_test((d,), np.mean, alternative="greater", **flips).pvalue
    p_less = stats.permutation_test((d,), np.mean, alternative="less", **flips).pvalue
    half = float(stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x)))
    return SeedTest(mean, mean - half, mean + half, float(p_greater), float(p_less), len(x))


def undefined(n: int, note: str) -> str:
    return f"the statistic is defined in {n} seed{'s' if n != 1 else ''}" + (f"; {note}" if note else "")


def directional(env: str, values: Sequence[float], claimed: Literal["greater", "less"], null: float = 0.0,
                note: str = "", alpha: float = ALPHA) -> Evidence:
    """Evidence for "the per-seed statistic is on the ``claimed`` side of ``null``": held when the
    one-sided sign-flip test in that direction gives p < alpha, not held when the test in the
    opposite direction does, inconclusive otherwise (the interval includes no effect). With
    fewer than 2 finite seeds, not testable."""
    t = seed_test(values, null)
    if t.n < 2:
        return Evidence(env, "not testable here", note=undefined(t.n, note))
    p_claim, p_other = (t.p_greater, t.p_less) if claimed == "greater" else (t.p_less, t.p_greater)
    verdict: Verdict = "held" if p_claim < alpha else "not held" if p_other < alpha else "inconclusive"
    return Evidence(env, verdict, t.mean, t.low, t.high, p_claim, t.n, note)


def two_sided(env: str, values: Sequence[float], margin: float, claimed: Literal["different", "equal"],
              note: str = "") -> Evidence:
    """Evidence about whether a per-seed statistic differs from 0. The 95% interval of the mean
    decides (with 5 seeds a two-sided sign-flip test cannot reach p < 0.05; its p is reported):
    it lies inside (-margin, margin) -> "equal" (no effect that matters, even if it excludes 0);
    else it excludes 0 -> "different"; else inconclusive. The verdict is held when the outcome is
    the ``claimed`` one, not held when it is the other."""
    t = seed_test(values)
    if t.n < 2:
        return Evidence(env, "not testable here", note=undefined(t.n, note))
    p_two = min(1.0, 2 * min(t.p_greater, t.p_less))
    if t.n < MIN_INTERVAL_SEEDS:  # over 2 or 3 values the interval is too wide to decide anything
        return Evidence(env, "inconclusive", t.mean, t.low, t.high, p_two, t.n,
                        f"{note}; fewer than {MIN_INTERVAL_SEEDS} seeds" if note else f"fewer than {MIN_INTERVAL_SEEDS} seeds")
    outcome = "equal" if -margin < t.low and t.high < margin else "different" if t.low > 0 or t.high < 0 else None
    verdict: Verdict = "inconclusive" if outcome is None else "held" if outcome == claimed else "not held"
    return Evidence(env, verdict, t.mean, t.low, t.high, p_two, t.n, note)


def every_part(env: str, parts: Mapping[str, Evidence]) -> Evidence:
    """One environment's evidence for a claim that says several things at once ("A's rank goes up
    while B's flat-lines"): held only when every part is held, not held when any part is not held,
    and otherwise not testable when a part is, else inconclusive. The evidence shown is the part that
    decides (the first not held, else the first not testable, else the first inconclusive, else the
    held part with the largest p), its note naming the part, so the value is one part's statistic."""
    named = [dataclasses.replace(e, env=env, note=f"{name}" + (f"; {e.note}" if e.note else ""))
             for name, e in parts.items()]
    for verdict in ("not held", "not testable here", "inconclusive"):
        deciding = next((e for e in named if e.verdict == verdict), None)
        if deciding is not None:
            return deciding
    return max(named, key=lambda e: e.p)


def layer_width(m: "Metrics", where: Mapping) -> int:
    """Units of the probed (penultimate) layer of the runs matching ``where`` (recorded at step 0)."""
    idx = m.mask(metric="units", **where)
    return int(np.nanmax(m.value[idx])) if len(idx) else 0


def final_values(m: "Metrics", metric: str, **where) -> np.ndarray:
    """Per seed, the mean over the points recorded in the last FINAL_FRACTION of the run (the last
    point at least): the one meaning of "final" in every claim."""
    steps, grid = m.curves(metric=metric, **where)
    if grid.size == 0:
        return np.zeros(0)
    window = steps >= steps[-1] * (1 - FINAL_FRACTION)
    with quiet_nan_warnings():
        return np.nanmean(grid[:, window], axis=1)


# ---- the three phases of learning (Section 4.1), read from one srank curve -----------------------

EARLY_STEPS = 2_000  # "just in a handful of gradient updates the rank collapses": the early window
EARLY_DROP = 0.5  # an early collapse: srank falls to <= 50% of its initial value within EARLY_STEPS
RISE_FACTOR, RISE_UNITS = 1.5, 5  # phase 2: srank later climbs to >= 1.5 x and >= 5 units above that minimum
LATE_DROP = 0.5  # phase 3: the final srank is <= 50% of the peak reached after the rise


@dataclasses.dataclass(frozen=True)
class Phases:
    """The phases one srank curve went through (Section 4.1; thresholds above, from the paper's
    wording: an abrupt early collapse, a rise, a late collapse)."""

    early_collapse: bool
    rise: bool
    late_collapse: bool
    minimum: tuple[int, float]  # (step, srank) of the early minimum
    peak: tuple[int, float]  # (step, srank) of the highest point after it

    @property
    def final_phase(self) -> int:
        """0: no early collapse, so no phases (phase 1 is that collapse: "simplification"); 1: collapsed
        and never rose after the early minimum; 2: rose; 3: rose, then collapsed."""
        return 3 if self.late_collapse else 2 if self.rise else 1 if self.early_collapse else 0


def detect_phases(steps: np.ndarray, srank: np.ndarray) -> Phases:
    steps, srank = np.asarray(steps), np.asarray(srank, np.float64)
    early = (steps > 0) & (steps <= EARLY_STEPS)
    i_min = int(np.nanargmin(np.where(early, srank, np.inf))) if early.any() else 0
    later = steps > steps[i_min]
    i_peak = int(np.nanargmax(np.where(later, srank, -np.inf))) if later.any() else i_min
    collapse = bool(early.any() and srank[i_min] <= EARLY_DROP * srank[0])
    rise = bool(collapse and srank[i_peak] >= max(RISE_FACTOR * srank[i_min], srank[i_min] + RISE_UNITS))
    window = steps >= steps[-1] * (1 - FINAL_FRACTION)
    late = bool(rise and np.nanmean(srank[window]) <= LATE_DROP * srank[i_peak])
    return Phases(collapse, rise, late, (int(steps[i_min]), float(srank[i_min])), (int(steps[i_peak]), float(srank[i_peak])))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy); NaN pairs are dropped, NaN if either side is constant."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[keep], y[keep]).statistic)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation (scipy); NaN pairs are dropped, NaN if either side is constant."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan")
    return float(stats.pearsonr(x[keep], y[keep]).statistic)


def write_claims(out: Path, claims: Sequence[Claim]) -> None:
    (Path(out) / "claims.json").write_text(json.dumps([jsonable(c) for c in claims], indent=2))
    for c in claims:
        print(f"[{c.verdict.upper():17s}] {c.id}: {c.paper}\n    {c.summary}; "
              + "; ".join(e.text() for e in c.evidence))


# ================================================================================================
# 12. CLI: one frozen config per script, its presets, validation before any work, --plot-only
# ================================================================================================


def require(condition: bool, message: str) -> None:
    """A config check: a ValueError (a one-line error, exit code 2) unless ``condition``."""
    if not condition:
        raise ValueError(message)


def require_positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        for v in value if isinstance(value, tuple) else (value,):
            require(v > 0, f"--{name.replace('_', '-')} must be > 0 (got {v})")


def require_fraction(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        for v in value if isinstance(value, tuple) else (value,):
            require(0 < v <= 1, f"--{name.replace('_', '-')} must be in (0, 1] (got {v})")


def require_multiple(cfg: Any, name: str, of: str) -> None:
    a, b = getattr(cfg, name), getattr(cfg, of)
    require(b > 0 and a % b == 0, f"--{name.replace('_', '-')} ({a}) must be a multiple of --{of.replace('_', '-')} ({b})")


def check_dataset(env_ids: Sequence[str], noise: float, size: int) -> None:
    """A locally collected dataset (bsuite, MinAtar) needs a size and a noise probability."""
    if any(not e.startswith("atari/") for e in env_ids):
        require(size > 0, f"--dataset-size must be > 0 for bsuite and MinAtar datasets (got {size})")
        require(0 <= noise <= 1, f"--dataset-noise must be in [0, 1] (got {noise})")


def config_from_json(config_type: type, data: Mapping) -> Any:
    """A frozen config from its meta.json form (lists become tuples again)."""
    fields = {f.name for f in dataclasses.fields(config_type)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"meta.json has settings this script does not know: {sorted(unknown)}")
    tuplify = lambda v: tuple(tuplify(x) for x in v) if isinstance(v, list) else v
    return config_type(**{k: tuplify(v) for k, v in data.items()})


@dataclasses.dataclass(frozen=True)
class Part:
    """One sub-study as a config runs it: the README's presets table shows each."""

    name: str
    envs: tuple[str, ...]
    seeds: int
    steps: int
    varies: str  # what the part's runs differ in, e.g. "12 learning rates"
    unit: str = "gradient steps"


@dataclasses.dataclass(frozen=True)
class Study:
    """What an experiment script hands ``main``: its config type and presets, and its steps:
    ``run(config, out, timings) -> extra meta`` (train, write metrics.csv); then, from metrics.csv
    alone, ``analyse(metrics, config, out)`` (tables, if any), ``claims(metrics, config)`` and
    ``plot(metrics, config, out)``. ``parts(config)`` lists the sub-studies the config runs."""

    name: str
    description: str
    presets: Mapping[str, Any]
    run: Callable[[Any, Path, Timings], dict | None]
    claims: Callable[[Metrics, Any], Sequence[Claim]]
    plot: Callable[[Metrics, Any, Path], None]
    analyse: Callable[[Metrics, Any, Path], None] | None = None
    parts: Callable[[Any], Sequence[Part]] | None = None


def main(study: Study, argv: Sequence[str] | None = None) -> None:
    """Parses ``--preset NAME`` and then every config field (``--help`` shows the chosen preset's
    values), checks the config before any dataset, compile or training, then runs, writes
    meta.json, computes the claims and draws the figures. ``--plot-only`` redraws from a run's own
    metrics.csv with the config saved in its meta.json. A bad option, environment id or dataset is
    a one-line error with exit code 2; an interrupt exits 130 (checkpoints kept)."""
    import argparse

    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=list(study.presets), default=None)
    known, rest = pre.parse_known_args(argv)
    preset = known.preset or ("cpu" if "cpu" in study.presets else next(iter(study.presets)))
    config_type = type(study.presets[preset])
    invocation = dataclasses.make_dataclass("Options", [
        ("preset", Literal[tuple(study.presets)], dataclasses.field(default=preset)),  # type: ignore[valid-type]
        ("config", Annotated[config_type, tyro.conf.arg(name="")], dataclasses.field(default=study.presets[preset])),
        ("out", Path, dataclasses.field(default=Path("results") / study.name)),
        ("plot_only", bool, dataclasses.field(default=False)),
        ("figures", Path | None, dataclasses.field(default=None)),
        ("coordinator", str | None, dataclasses.field(default=None)),
        ("num_processes", int, dataclasses.field(default=1)),
        ("process_id", int, dataclasses.field(default=0)),
        ("cpu_devices", int, dataclasses.field(default=0)),
    ], frozen=True)
    try:
        options = tyro.cli(invocation, args=["--preset", preset, *rest], description=(
            f"{study.description}\n\n--preset: {', '.join(study.presets)} (every default below is the chosen "
            "preset's value). --out: where metrics.csv, meta.json, claims.json, the figures and the checkpoints "
            "go. --plot-only: redraw the figures and claims of a finished run from its metrics.csv, with the "
            "config saved in its meta.json. --figures: draw the figures and tables there instead of in --out. "
            "--coordinator HOST:PORT --num-processes N --process-id I: one of N processes (hosts) of one run; "
            "the members are split over all their devices and process 0 writes the files. --cpu-devices: "
            "JAX devices a CPU is split into (0: one per core; results are bit-for-bit for a given count)."))
        require(options.cpu_devices >= 0, f"--cpu-devices must be >= 0 (got {options.cpu_devices})")
        configure_cpu_devices(options.cpu_devices)
        if options.num_processes > 1:
            start_distributed(options.coordinator, options.num_processes, options.process_id)
        out = Path(options.out)
        if options.plot_only:
            config, preset = _config_of_run(out, config_type, known.preset, options.config, study.presets[preset])
        else:
            config = options.config
            config.check()
        _run_study(study, preset, config, out, options.plot_only, options.figures or out)
    except (ValueError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted: finished chunks are checkpointed; run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None


def _config_of_run(out: Path, config_type: type, asked_preset: str | None, parsed: Any, preset_config: Any):
    """The config a finished run was made with (its meta.json), for --plot-only. Asking for another
    preset, or changing a setting, is an error: a redraw shows the run as it was made."""
    meta_path = out / "meta.json"
    if not meta_path.exists():
        raise DatasetError(f"{meta_path} does not exist: run the script without --plot-only first")
    meta = json.loads(meta_path.read_text())
    if asked_preset is not None and asked_preset != meta["preset"]:
        raise ValueError(f"--plot-only: {out} was made with --preset {meta['preset']}, not {asked_preset}; "
                         f"drop --preset or pass --preset {meta['preset']}")
    changed = [f.name for f in dataclasses.fields(config_type)
               if getattr(parsed, f.name) != getattr(preset_config, f.name)]
    if changed:
        raise ValueError(f"--plot-only redraws the run in {out} as it was made: drop "
                         + ", ".join(f"--{n.replace('_', '-')}" for n in changed))
    return config_from_json(config_type, meta["config"]), meta["preset"]


def start_distributed(coordinator: str | None, num_processes: int, process_id: int) -> None:
    """Joins a multi-process run (jax.distributed; on CPUs, gloo carries the collectives)."""
    require(coordinator is not None, "--num-processes > 1 needs --coordinator HOST:PORT (process 0's address)")
    require(0 <= process_id < num_processes, f"--process-id must be in [0, {num_processes})")
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def _run_study(study: Study, preset: str, config: Any, out: Path, plot_only: bool, figures: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if not plot_only:
        # The code's commit as the run starts: a commit made while a long run trains is not the run's.
        source = {"git_commit": git_commit(), "git_dirty": git_dirty()}
        timings = Timings()
        extra = study.run(config, out, timings) or {}
        if not is_main_process():  # process 0 writes the run's files
            return
        write_meta(out, preset, config, time.time() - start, source, {**timings.meta(), **extra})
    metrics = Metrics(metrics_path(out))
    if study.analyse is not None:
        study.analyse(metrics, config, figures)
    write_claims(out, study.claims(metrics, config))
    study.plot(metrics, config, figures)
    print(f"wrote {out}/ in {time.time() - start:.0f} s")


def metrics_path(out: Path) -> Path:
    """A run's metrics: metrics.csv, or metrics.csv.gz (the committed reference runs)."""
    gz = Path(out) / "metrics.csv.gz"
    return gz if gz.exists() and not (Path(out) / "metrics.csv").exists() else Path(out) / "metrics.csv"


# ================================================================================================
# 13. Plotting style: seed mean with a standard-error band
# ================================================================================================


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
    with np.errstate(invalid="ignore", divide="ignore"), quiet_nan_warnings():
        mean = np.nanmean(values, axis=axis)
        n = np.sum(np.isfinite(values), axis=axis)
        std = np.nanstd(values, axis=axis, ddof=1) if values.shape[axis] > 1 else np.zeros_like(mean)
        err = np.where(n > 1, std / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, err


@contextlib.contextmanager
def quiet_nan_warnings():
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
    """Saves ``name``.png and ``name``.pdf under ``out`` (without timestamps, so a redraw of the same
    data gives the same files) and records the figure's title in ``out/captions.json``."""
    paths = [Path(out) / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        metadata = {"Software": None} if p.suffix == ".png" else {"CreationDate": None, "Creator": None,
                                                                    "Producer": None}
        fig.savefig(p, bbox_inches="tight", dpi=130 if p.suffix == ".png" else None, metadata=metadata)
    captions = Path(out) / "captions.json"
    titles = json.loads(captions.read_text()) if captions.exists() else {}
    titles[name] = fig._suptitle.get_text() if fig._suptitle is not None else name
    atomic_write(captions, lambda f: f.write(json.dumps(dict(sorted(titles.items())), indent=1).encode()))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def seeds_note(metrics: Metrics, **where) -> str:
    n = len(metrics.values("seed", **where))
    return f"mean of {n} seed{'s' if n != 1 else ''}, band or bar = standard error"


def short_env(env_id: str) -> str:
    return env_id.split("/")[-1]

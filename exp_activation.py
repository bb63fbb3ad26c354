"""Activation functions and rank: ReLU, ELU and tanh; the LSTM cell activation; depth; the width of
the bottleneck layer; activation sparsity; the Hessian spectrum (Section 6 and Appendices A.1, A.2,
A.13 and A.14 of Gulcehre et al. 2022).

Figures: 9 (srank, return, dead units and dormant fraction of 2x64 MLPs with ReLU, ELU and tanh),
10 (LSTM with tanh or ReLU cell activation against a feed-forward ReLU MLP), 23 (srank of every layer
of 2-, 4- and 8-layer ReLU MLPs), 24/25 (Hessian eigenvalue spectrum of a one-hidden-layer network,
ReLU against ELU), 35/36 (width of the last hidden layer at two learning rates), 37 (Gram matrices of
the last hidden layer's features, ReLU against ELU, at the start and the end of training).

    make exp_activation                        # cpu preset: bsuite catch, cartpole, mountain_car, memory_len
    python exp_activation.py --preset paper    # 1M gradient steps, 5 seeds
    python exp_activation.py --plot-only       # redraw the figures from results/exp_activation/
    python exp_activation.py --help            # every setting, with the chosen preset's value

Stand-ins and sizes.
  * Fig. 10: the paper's LSTM study ran on DeepMind Lab (SeekAvoid), which cannot be installed here.
    It runs on ``bsuite/memory_len`` instead (memory length 10: the context bit is shown at the start
    and must be recalled 10 steps later), a partially observable task that needs memory. The dataset
    is collected with a history of 11 observations; the LSTM reads that history, and the feed-forward
    baseline reads only the last observation of it (so it cannot beat chance).
  * Fig. 24/25: one hidden layer of ``hessian_hidden`` (16) units on catch: 50 inputs -> 16 -> 3
    actions = 867 parameters, so the Hessian is exact (jax.hessian of the flattened parameters,
    float32, symmetrised, eigenvalues with numpy's eigvalsh in float64). The loss is the double-DQN
    Huber TD loss averaged over the WHOLE dataset with the trained target network held fixed (the
    bootstrap target carries no gradient). Identical transitions are merged and weighted by their
    count, which leaves the loss unchanged (catch's 50k transitions are ~600 distinct ones); if more
    than ``hessian_max_transitions`` distinct transitions remain (continuous states), a fixed uniform
    subsample of that many is used instead and meta.json says so. An eigenvalue counts as near zero
    when |lambda| <= t * max|lambda| of the same Hessian, with t = n x float32 machine epsilon for n
    parameters (numpy's numerical zero of such a matrix); the shares at t = 1e-3 and 1e-6 are
    reported beside it.
  * Fig. 35/36: the paper's network sizes are lost from its text; here ReLU MLPs (64, b) and
    (64, 64, b) whose last (bottleneck) layer has b units, at learning rates 3e-4 and 3e-3.
  * Fig. 37: features of the last hidden layer on the first 64 states of the probe batch, for the
    ReLU and ELU networks of Fig. 9 on the first environment (seed 0), at initialisation and at the end.
    Sparsity = fraction of exactly-zero activations (``zero_frac`` in metrics.csv, on all 512 states).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import common as C

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------

SubStudy = Literal["activation", "recurrent", "depth", "bottleneck", "hessian"]
SUB_STUDIES: tuple[SubStudy, ...] = ("activation", "recurrent", "depth", "bottleneck", "hessian")


@dataclasses.dataclass(frozen=True)
class Config:
    """Offline double DQN with ReLU, ELU and tanh networks, LSTM cell activations, depths, bottleneck
    widths: rank, dead units, sparsity and the Hessian spectrum."""

    env: tuple[str, ...]
    """Environments of Fig. 9, 23 and 37 (Fig. 37 uses the first)."""
    seeds: int
    """Training seeds per network."""
    num_steps: int
    """Gradient steps of the activation study (Fig. 9/37)."""
    depth_steps: int
    """Gradient steps of the depth study (Fig. 23)."""
    bottleneck_steps: int
    """Gradient steps of the bottleneck-width study (Fig. 35/36)."""
    recurrent_steps: int
    """Gradient steps of the LSTM study on the memory task (Fig. 10)."""
    hessian_steps: int
    """Gradient steps before the Hessian of the one-hidden-layer networks is taken (Fig. 24/25)."""
    chunk_steps: int
    """Gradient steps per compiled call; the probe metrics are taken after each."""
    early_chunk_steps: int
    """Finer chunks over the first chunk (0: none)."""
    num_evals: int
    """Online evaluations per run (every run's length must be a multiple of chunk_steps x num_evals)."""
    eval_episodes: int
    """Greedy evaluation episodes per member and evaluation."""
    dataset_size: int
    """Transitions in each locally collected dataset."""
    activations: tuple[C.Activation, ...] = ("relu", "elu", "tanh")
    """Activations of the 2x64 MLPs (Fig. 9)."""
    depths: tuple[int, ...] = (2, 4, 8)
    """Hidden layers of the depth study's ReLU MLPs (He init; Fig. 23)."""
    bottleneck_units: tuple[int, ...] = (2, 8, 32, 64)
    """Widths b of the last hidden layer of the bottleneck study's ReLU MLPs (Fig. 35/36)."""
    bottleneck_layers: tuple[int, ...] = (1, 2)
    """64-unit layers before the bottleneck: 1 gives Fig. 35's (64, b) network, 2 Fig. 36's (64, 64, b)."""
    bottleneck_lrs: tuple[float, ...] = (3e-4, 3e-3)
    """Learning rates of the bottleneck study."""
    bottleneck_env: tuple[str, ...] = ("bsuite/catch",)
    """Environments of the bottleneck study."""
    recurrent_env: str = "bsuite/memory_len"
    """The memory task standing in for DeepMind Lab (Fig. 10)."""
    hessian_env: str = "bsuite/catch"
    """Environment of the Hessian study."""
    hessian_hidden: int = 16
    """Hidden units of the Hessian study's one-hidden-layer networks."""
    hessian_max_transitions: int = 4_096
    """Most distinct transitions the exact Hessian is averaged over (else a fixed subsample)."""
    learning_rate: float = 3e-4
    """Adam learning rate (the paper's bsuite rate)."""
    batch_size: int = 32
    """Minibatch size."""
    target_update_period: int = 100
    """Gradient steps between target-network updates."""
    gamma: float = 0.99
    """Discount."""
    optimizer: C.Optimizer = "adam"
    """Optimizer."""
    probe_size: int = 512
    """States in the fixed probe batch."""
    dataset_noise: float = 0.1
    """Probability of a random action in the behaviour policy."""
    gram_states: int = 64
    """Probe states shown in the Gram matrices of Fig. 37."""
    studies: tuple[SubStudy, ...] = SUB_STUDIES
    """Sub-studies to run (figures of the others are skipped)."""

    checkpoint_seconds: float = 60.0
    """Wall seconds between checkpoints: a killed run resumes from the last one."""

    def check(self) -> None:
        C.require(self.checkpoint_seconds >= 0, "--checkpoint-seconds must be >= 0")
        C.check_env_ids((*self.env, *self.bottleneck_env, self.recurrent_env, self.hessian_env))
        C.require_positive(self, "seeds", "num_steps", "depth_steps", "bottleneck_steps", "recurrent_steps",
                           "hessian_steps", "chunk_steps", "num_evals", "eval_episodes", "depths", "bottleneck_units",
                           "bottleneck_lrs", "hessian_hidden", "hessian_max_transitions", "learning_rate",
                           "batch_size", "target_update_period", "probe_size", "gram_states")
        C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        C.require(self.recurrent_env == "bsuite/memory_len", "--recurrent-env must be bsuite/memory_len")
        lengths = {"activation": "num_steps", "depth": "depth_steps", "bottleneck": "bottleneck_steps",
                   "recurrent": "recurrent_steps", "hessian": "hessian_steps"}
        for name in (lengths[study] for study in self.studies):
            steps = getattr(self, name)
            C.require(steps % (self.chunk_steps * self.num_evals) == 0,
                      f"--{name.replace('_', '-')} ({steps}) must be a multiple of chunk_steps x num_evals "
                      f"({self.chunk_steps * self.num_evals})")
        if self.early_chunk_steps:
            C.require_multiple(self, "chunk_steps", "early_chunk_steps")


BSUITE = ("bsuite/catch", "bsuite/cartpole", "bsuite/mountain_car")

PRESETS = {
    # The paper's bsuite hyperparameters (batch 32, Adam 3e-4, discount 0.99, 2x64 where the study does not
    # vary the network) and its 5 seeds, with the number of gradient steps scaled down from 1e6 so that
    # all five sub-studies (31 trainer calls of 5-10 members each) take about 10 minutes on a 2-core CPU
    # (537 s at 03383dd on an AVX-512 EPYC; the README's run-times table has the current figure). The
    # LSTM is the slowest network per step (a scan over 11 observations inside every step), so its run
    # is the shortest.
    "cpu": Config(env=BSUITE, seeds=5, num_steps=60_000, depth_steps=30_000, bottleneck_steps=40_000,
                  recurrent_steps=10_000, hessian_steps=60_000, chunk_steps=1_000, early_chunk_steps=100,
                  num_evals=10, eval_episodes=10, dataset_size=50_000),
    # The paper's length and 5 seeds: 1e6 gradient steps for the four feed-forward sub-studies, whose
    # claims are about the end of long training (the ReLU collapse, dead and sparse units; the Hessian
    # spectrum, after 9e5 steps as in Appendix A.2; the deep and the narrow networks' collapse and poor
    # returns). The paper trains its DeepMind Lab LSTM for 2e4 steps (Appendix A.12); the LSTM study
    # trains 1e5, the fewest that fit 20 evaluations at 5,000-step chunks (its scan over 11 observations
    # makes a step about 20 times a 2x64 MLP's). 119 minutes on a 2-core AVX-512 EPYC at c70ddf0: depth
    # 51, bottleneck 32, activation 22, LSTM 12, Hessian 2 (meta.json trainings). The README's
    # run-times table has the current figures.
    "long": Config(env=BSUITE, seeds=5, num_steps=1_000_000, depth_steps=1_000_000, bottleneck_steps=1_000_000,
                   recurrent_steps=100_000, hessian_steps=900_000, chunk_steps=5_000, early_chunk_steps=500,
                   num_evals=20, eval_episodes=10, dataset_size=50_000),
    # As `long`, with 20 evaluation episodes; the LSTM study at `long`'s 1e5 steps for the same reason.
    "paper": Config(env=BSUITE, seeds=5, num_steps=1_000_000, depth_steps=1_000_000, bottleneck_steps=1_000_000,
                    recurrent_steps=100_000, hessian_steps=900_000, chunk_steps=5_000, early_chunk_steps=500,
                    num_evals=20, eval_episodes=20, dataset_size=50_000),
    "smoke": Config(env=("bsuite/catch",), seeds=2, num_steps=400, depth_steps=200, bottleneck_steps=200,
                    recurrent_steps=200, hessian_steps=200, chunk_steps=100, early_chunk_steps=0, num_evals=1,
                    eval_episodes=3, dataset_size=2_000, depths=(2, 4), bottleneck_units=(4, 16)),
}


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> dict:
    """Offline double DQN (Huber TD loss, Adam, a target network) on a fixed locally collected
    dataset per environment. Every network is its own compiled program: one trainer call per
    (environment, network), with the seeds (and, for the bottleneck study, the learning rates) as
    vmapped members. Members that share a seed start from the same weights, and every network
    sees the same data and seeds. Every chunk the probe metrics of the last hidden layer on 512
    dataset states; ``num_evals`` times per run the greedy return."""
    rows, extra = [], {}
    method = Method(cfg, out, timings)
    if "activation" in cfg.studies:
        rows += run_activation(cfg, method)
    if "recurrent" in cfg.studies:
        rows += run_recurrent(cfg, method)
    if "depth" in cfg.studies:
        rows += run_depth(cfg, method)
    if "bottleneck" in cfg.studies:
        rows += run_bottleneck(cfg, method)
    if "hessian" in cfg.studies:
        hessian_rows, extra["hessian"] = run_hessian(cfg, method)
        rows += hessian_rows
    C.write_metrics(out, rows)
    return extra


@dataclasses.dataclass(frozen=True)
class Method:
    """What every trainer call of this script shares: the method (loss, optimizer, probe,
    evaluation), stated once here."""

    cfg: Config
    out: Path
    timings: C.Timings

    def dataset(self, env_id: str, history: int = 1) -> tuple[C.Dataset, jax.Array]:
        """The environment's offline dataset and the trainer's fixed probe batch."""
        with self.timings("collect"):
            ds = C.offline_dataset(env_id, noise=self.cfg.dataset_noise, num_transitions=self.cfg.dataset_size,
                                   history=history)
        return ds, ds.stacked_obs(jnp.asarray(C.probe_rows(ds, self.cfg.probe_size)))

    def train(self, net: nn.Module, ds: C.Dataset, env_id: str, columns: dict, members: list[C.Member], steps: int,
              history: int = 1, early_chunks: bool = True) -> C.TrainResult:
        """One trainer call: double DQN, ``num_evals`` greedy evaluations. ``early_chunks`` splits the
        first chunk (phase 1 resolved in srank curves; one more compiled program, so the depth study,
        which plots only end-of-training ranks, goes without)."""
        cfg = self.cfg
        train = C.TrainConfig(num_steps=steps, chunk_steps=cfg.chunk_steps,
                              early_chunk_steps=cfg.early_chunk_steps if early_chunks else 0,
                              batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                              target_update_period=cfg.target_update_period, probe_size=cfg.probe_size,
                              eval_every=steps // cfg.num_evals, checkpoint_seconds=cfg.checkpoint_seconds)
        return C.train_offline(net, ds, C.DoubleDQN(gamma=cfg.gamma), members, train,
                               evaluate=C.Evaluator(env_id, cfg.eval_episodes, history=history),
                               columns={"env": env_id, "agent": "dqn", **columns},
                               checkpoints=self.out / "checkpoints", timings=self.timings)

    def seeds(self, learning_rate: float | None = None, **columns) -> list[C.Member]:
        return [C.Member(seed=s, learning_rate=learning_rate or self.cfg.learning_rate, columns=columns)
                for s in range(self.cfg.seeds)]


def run_activation(cfg: Config, method: Method) -> list[dict]:
    """Fig. 9 and 37: 2x64 MLPs with each activation; sparsity at the start and end; Gram features."""
    rows, gram = [], {}
    for env_id in cfg.env:
        ds, probe = method.dataset(env_id)
        for act in cfg.activations:
            net = C.MLP(ds.num_actions, (64, 64), act)
            members = method.seeds(activation=act)
            columns = {"study": "activation"}
            result = method.train(net, ds, env_id, columns, members, cfg.num_steps)
            rows += result.rows
            start = C.initial_params(net, probe[:1], [m.seed for m in members])  # the trainer's initial weights
            for step, when, params in ((0, "start", start), (cfg.num_steps, "end", result.state.params)):
                features = penultimate_features(net, params, probe)
                rows += member_rows({"study": "activation", "env": env_id, "agent": "dqn"}, members, step,
                                    "zero_frac", np.mean(features == 0, axis=(1, 2)))
                if env_id == cfg.env[0] and act in ("relu", "elu"):
                    gram[f"{act}_{when}"] = features[:, :cfg.gram_states]
    if C.is_main_process():
        np.savez(method.out / "gram.npz", env=np.asarray(cfg.env[0]), **gram)
    return rows


def run_recurrent(cfg: Config, method: Method) -> list[dict]:
    """Fig. 10 (stand-in on bsuite/memory_len): LSTM with tanh / ReLU cell activation, ReLU MLP."""
    history = C.MEMORY_LENGTH + 1
    ds, _ = method.dataset(cfg.recurrent_env, history)
    nets = {("lstm", "tanh"): C.RecurrentQNetwork(ds.num_actions, 64, "tanh"),
            ("lstm", "relu"): C.RecurrentQNetwork(ds.num_actions, 64, "relu"),
            ("mlp", "relu"): LastObservationMLP(ds.num_actions)}
    rows = []
    for (network, act), net in nets.items():
        rows += method.train(net, ds, cfg.recurrent_env, {"study": "recurrent"},
                            method.seeds(network=network, activation=act), cfg.recurrent_steps, history).rows
    return rows


def run_depth(cfg: Config, method: Method) -> list[dict]:
    """Fig. 23: ReLU MLPs (He init) of several depths; srank of every layer at the start and end."""
    rows = []
    for env_id in cfg.env:
        ds, probe = method.dataset(env_id)
        for depth in cfg.depths:
            net = C.MLP(ds.num_actions, (64,) * depth, "relu", init_scheme="he")
            members = method.seeds(depth=depth)
            result = method.train(net, ds, env_id, {"study": "depth"}, members, cfg.depth_steps, early_chunks=False)
            rows += result.rows
            start = C.initial_params(net, probe[:1], [m.seed for m in members])
            for step, params in ((0, start), (cfg.depth_steps, result.state.params)):
                ranks = layer_sranks(net, params, probe)
                for layer in range(depth):
                    rows += member_rows({"study": "depth", "env": env_id, "agent": "dqn"}, members, step,
                                        f"srank_layer{layer + 1}", ranks[:, layer])
    return rows


def run_bottleneck(cfg: Config, method: Method) -> list[dict]:
    """Fig. 35/36: ReLU MLPs of 64-unit layers and a last (bottleneck) layer of width b, for each b
    and each architecture; seeds x learning rates as members."""
    rows = []
    for env_id in cfg.bottleneck_env:
        ds, _ = method.dataset(env_id)
        for layers in cfg.bottleneck_layers:
            for units in cfg.bottleneck_units:
                members = [m for lr in cfg.bottleneck_lrs for m in method.seeds(lr, width=units, lr=lr)]
                rows += method.train(C.MLP(ds.num_actions, (64,) * layers + (units,), "relu"), ds, env_id,
                                     {"study": "bottleneck", "layers": layers}, members, cfg.bottleneck_steps).rows
    return rows


def run_hessian(cfg: Config, method: Method) -> tuple[list[dict], dict]:
    """Fig. 24/25: one-hidden-layer ReLU and ELU networks; the exact TD-loss Hessian after training."""
    ds, _ = method.dataset(cfg.hessian_env)
    batch, weights, exact = distinct_transitions(ds, cfg.hessian_max_transitions)
    rows, spectra, info = [], {}, {}
    for act in ("relu", "elu"):
        net = C.MLP(ds.num_actions, (cfg.hessian_hidden,), act)
        members = method.seeds(activation=act)
        result = method.train(net, ds, cfg.hessian_env, {"study": "hessian"}, members, cfg.hessian_steps)
        rows += result.rows
        eigenvalues = []
        for m, member in enumerate(members):
            one = lambda tree: jax.tree_util.tree_map(lambda x: x[m], tree)
            with method.timings("hessian"):
                eig = td_hessian_eigenvalues(net, one(result.state.params), one(result.state.target_params), batch,
                                             weights, cfg.gamma)
            spectra[f"{act}_seed{member.seed}"] = eig
            eigenvalues.append(eig)
        columns = {"study": "hessian", "env": cfg.hessian_env, "agent": "dqn"}
        for threshold in near_zero_thresholds(len(eigenvalues[0])):
            rows += member_rows(columns | {"relative_threshold": threshold}, members, cfg.hessian_steps,
                                "hessian_near_zero", [near_zero_share(e, threshold) for e in eigenvalues])
        rows += member_rows(columns, members, cfg.hessian_steps, "hessian_max_abs_eig",
                            [np.max(np.abs(e)) for e in eigenvalues])
        info["num_params"] = int(ravel_pytree(jax.tree_util.tree_map(lambda x: x[0], result.state.params))[0].size)
    info |= {"hidden": cfg.hessian_hidden, "transitions": len(ds), "distinct_transitions_used": len(weights),
             "exact_over_dataset": bool(exact),
             "near_zero": "|lambda| <= threshold * max|lambda|, thresholds " + ", ".join(
                 f"{t:.3g}" for t in near_zero_thresholds(info["num_params"]))}
    if C.is_main_process():
        np.savez(method.out / "hessian.npz", **spectra)
    return rows, info


def parts(cfg: Config) -> list[C.Part]:
    """The sub-studies ``cfg`` runs, for the README's presets table."""
    every = {"activation": C.Part("activation", cfg.env, cfg.seeds, cfg.num_steps,
                                  f"{len(cfg.activations)} activations"),
             "recurrent": C.Part("recurrent", (cfg.recurrent_env,), cfg.seeds, cfg.recurrent_steps,
                                 "LSTM (tanh, ReLU cell) and last-observation MLP"),
             "depth": C.Part("depth", cfg.env, cfg.seeds, cfg.depth_steps, f"{len(cfg.depths)} depths"),
             "bottleneck": C.Part("bottleneck", cfg.bottleneck_env, cfg.seeds, cfg.bottleneck_steps,
                                  f"{len(cfg.bottleneck_units)} widths x {len(cfg.bottleneck_layers)} depths x "
                                  f"{len(cfg.bottleneck_lrs)} learning rates"),
             "hessian": C.Part("hessian", (cfg.hessian_env,), cfg.seeds, cfg.hessian_steps, "ReLU and ELU")}
    return [every[s] for s in cfg.studies]

# ------------------------------------------------------------------------------------------------
# The study's own pieces: a last-observation MLP, per-layer ranks, sparsity, the exact Hessian
# ------------------------------------------------------------------------------------------------


class LastObservationMLP(nn.Module):
    """The feed-forward baseline of Fig. 10: a ReLU MLP that reads only the last observation of the
    (batch, time, ...) history the recurrent agents read."""

    num_actions: int
    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return C.MLP(self.num_actions, self.hidden, "relu")(obs[:, -1])


def member_rows(columns: dict, members: list[C.Member], step: int, metric: str, values) -> list[dict]:
    """Rows of a metric computed here (not by the trainer), one per member."""
    return [{**columns, **m.columns, "seed": m.seed, "step": step, "metric": metric, "value": float(v)}
            for m, v in zip(members, np.asarray(values, np.float64))]


def penultimate_features(net: nn.Module, params: C.PyTree, obs: jax.Array) -> np.ndarray:
    """(members, batch, units) last-hidden-layer features of every member of stacked ``params``."""
    return np.asarray(jax.vmap(lambda p: net.apply(p, obs)[1])(params))  # eager: one call, no compile


def layer_sranks(net: C.MLP, params: C.PyTree, obs: jax.Array) -> np.ndarray:
    """(members, layers) srank of every hidden layer of an MLP (read from its sown intermediates)."""

    def one(p):
        _, state = net.apply(p, obs, mutable=["intermediates"])
        inter = state["intermediates"]
        return jnp.stack([C.effective_rank(inter[f"features_{i}"][0]) for i in range(len(net.hidden))])

    return np.asarray(C.per_member(one)(params))  # several SVDs per member: never batched (C.per_member)


def distinct_transitions(ds: C.Dataset, limit: int, seed: int = 0) -> tuple[C.Batch, np.ndarray, bool]:
    """The dataset's transitions with duplicates merged: (batch, weights = counts, exact).

    The next observation of a terminal transition is zeroed first (its TD target is the reward
    alone, whatever it is). If more than ``limit`` distinct transitions remain, a fixed uniform
    subsample of ``limit`` transitions (weights 1) is returned instead and ``exact`` is False."""
    rows = np.asarray(ds.valid)
    b = jax.tree_util.tree_map(np.asarray, ds.batch(jnp.asarray(rows)))
    n = len(rows)
    next_obs = b.next_obs * b.discount.reshape(n, *([1] * (b.next_obs.ndim - 1)))
    key = np.concatenate([b.obs.reshape(n, -1), b.action[:, None], b.reward[:, None], b.discount[:, None],
                          next_obs.reshape(n, -1)], axis=1).astype(np.float32)
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    exact = len(first) <= limit
    if exact:
        pick, weights = first, counts.astype(np.float32)
    else:
        pick = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
        weights = np.ones(limit, np.float32)
    batch = b._replace(next_obs=next_obs)
    return jax.tree_util.tree_map(lambda x: x[pick], batch), weights, exact


def td_hessian_eigenvalues(net: nn.Module, params: C.PyTree, target_params: C.PyTree, batch: C.Batch,
                           weights: np.ndarray, gamma: float, chunk: int = 512) -> np.ndarray:
    """Eigenvalues (ascending) of the exact Hessian, in the flattened parameters, of the weighted
    mean double-DQN Huber TD loss; the target network is held fixed and the online network's
    next-state action choice carries no gradient (as in training)."""
    hessian = td_hessian_program(net, gamma)
    n = len(weights)
    pad = -n % chunk  # zero-weight padding: one compiled shape for every chunk
    batch = jax.tree_util.tree_map(lambda x: np.concatenate([x, np.repeat(x[:1], pad, axis=0)]), batch)
    weights = np.concatenate([weights, np.zeros(pad, np.float32)])
    size = ravel_pytree(params)[0].size
    total = np.zeros((size, size))
    for start in range(0, n + pad, chunk):
        part = jax.tree_util.tree_map(lambda x: jnp.asarray(x[start:start + chunk]), batch)
        total += np.asarray(hessian(params, target_params, part, jnp.asarray(weights[start:start + chunk])),
                            np.float64)
    total /= weights.sum()
    return np.linalg.eigvalsh(0.5 * (total + total.T))


@functools.lru_cache(maxsize=8)  # compiled once per network, not once per member (seconds each)
def td_hessian_program(net: nn.Module, gamma: float):
    """One chunk's Hessian of the weighted sum of Huber TD losses, in the flattened online parameters."""

    def chunk_hessian(params, target_params, b, w):
        flat, unravel = ravel_pytree(params)

        def weighted_loss(flat):
            q_both, _ = net.apply(unravel(flat), jnp.concatenate([b.obs, b.next_obs]))
            q_tm1, q_selector = jnp.split(q_both, 2)
            q_value, _ = net.apply(target_params, b.next_obs)
            td = C.double_q_td_error(q_tm1, b.action, b.reward, gamma * b.discount, q_value,
                                     jax.lax.stop_gradient(q_selector))
            return jnp.sum(w * C.huber(td))

        return jax.hessian(weighted_loss)(flat)

    return jax.jit(chunk_hessian)


def near_zero_thresholds(num_params: int) -> tuple[float, ...]:
    """Relative thresholds for "an eigenvalue is near zero": |lambda| <= t * max|lambda|. The claim's
    rule uses the first, the numerical zero of a float32 matrix of this size (numpy.linalg.matrix_rank's
    default tolerance: n x machine epsilon); the other two show how the share moves with t."""
    return (num_params * float(np.finfo(np.float32).eps), *FIXED_NEAR_ZERO)


FIXED_NEAR_ZERO = (1e-3, 1e-6)  # the two thresholds beside the numerical zero, the same for every size


def near_zero_share(eigenvalues: np.ndarray, threshold: float) -> float:
    scale = np.max(np.abs(eigenvalues))
    return float(np.mean(np.abs(eigenvalues) <= threshold * scale)) if scale > 0 else 1.0


# ------------------------------------------------------------------------------------------------
# Claims, computed from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def relative_srank(m: C.Metrics, **where) -> np.ndarray:
    """Per seed, final srank over the srank at initialisation (activations differ at the start)."""
    return C.final_values(m, "srank", **where) / m.at_step(0, metric="srank", **where)


def claim_relu_collapses_most(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="activation"):
        rel = {a: relative_srank(m, env=env, study="activation", activation=a) for a in ("relu", "elu", "tanh")}
        # "ELU and tanh keep a higher rank than ReLU": ReLU below both, so below the lower of the two
        evidence.append(C.directional(env, rel["relu"] - np.minimum(rel["elu"], rel["tanh"]), "less"))
    return C.Claim(
        "activation.relu_collapses", "The effective rank of the penultimate layer with ReLU collapses faster; ELU and "
        "tanh keep a relatively higher rank (Section 6, Fig. 9).", "per seed, final srank relative to the srank at "
        "initialisation: ReLU's minus the smaller of ELU's and tanh's", "held if < 0 (one-sided sign-flip test, "
        "p < 0.05); not held if > 0", tuple(evidence))


def claim_relu_dormant(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="activation"):
        dormant = {a: C.final_values(m, "dormant_frac", env=env, study="activation", activation=a)
                   for a in ("relu", "elu")}
        evidence.append(C.directional(env, dormant["relu"] - dormant["elu"], "greater"))
    return C.Claim(
        "activation.relu_dormant", "The units of the ReLU network become sparser and die, significantly more than "
        "the ELU network's (Section 6, Appendix A.14, Fig. 37).", f"per seed, the final fraction of tau-dormant "
        f"units (mean |activation| <= {C.DORMANT_TAU} x the layer's mean; defined for every activation, unlike exact "
        "zeros, which ELU never outputs): ReLU's minus ELU's", "held if > 0 (one-sided sign-flip test, p < 0.05); "
        "not held if < 0", tuple(evidence))


def claim_relu_sparsity_grows(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="activation"):
        where = {"env": env, "study": "activation", "activation": "relu", "metric": "zero_frac"}
        steps = m.steps(**where)
        evidence.append(C.directional(env, m.at_step(int(steps[-1]), **where) - m.at_step(0, **where), "greater"))
    return C.Claim(
        "activation.relu_sparsity_grows", "The activations of the ReLU network become very sparse during training "
        "(Appendix A.14, Fig. 37).", "per seed, the fraction of exactly-zero activations of the ReLU network on the "
        "probe batch at the end minus at initialisation", "held if > 0 (one-sided sign-flip test, p < 0.05); not "
        "held if < 0", tuple(evidence))


def claim_lstm(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="recurrent"):
        rel = {(n, a): relative_srank(m, env=env, study="recurrent", network=n, activation=a)
               for n, a in (("lstm", "tanh"), ("lstm", "relu"), ("mlp", "relu"))}
        gap = rel["lstm", "tanh"] - np.maximum(rel["lstm", "relu"], rel["mlp", "relu"])
        evidence.append(C.directional(env, gap, "greater", note="stand-in for DeepMind Lab"))
    return C.Claim(
        "activation.lstm", "An LSTM with tanh cell activation shows no rank collapse; with a ReLU cell, or a "
        "feed-forward ReLU MLP instead, the rank collapses by the end of training (Section 6, Fig. 10).",
        "per seed, final over initial srank of the output features: the tanh LSTM's minus the larger of the ReLU "
        "LSTM's and the ReLU MLP's", "held if > 0 (one-sided sign-flip test, p < 0.05); not held if < 0",
        tuple(evidence))


def claim_depth_layers(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="depth"):
        worst = None  # per seed, the least negative rho over the depths: "at every depth"
        for depth in sorted(m.values("depth", env=env, study="depth")):
            where = {"env": env, "study": "depth", "depth": depth}
            end = int(m.steps(metric="srank_layer1", **where).max())
            ranks = np.stack([m.at_step(end, metric=f"srank_layer{k}", **where) for k in range(1, depth + 1)])
            rhos = np.asarray([layer_trend(r) for r in ranks.T])
            worst = rhos if worst is None else np.fmax(worst, rhos)
        evidence.append(C.directional(env, worst, "less"))
    return C.Claim(
        "activation.depth_layers", "At the end of training, the rank falls from lower to higher layers, at every "
        "depth (Appendix A.1, Fig. 23).", "per seed, Spearman's rho between a layer's index and its final srank "
        "(0 when every layer has the same srank: the rank does not fall), the largest over the depths (2, 4, 8 "
        "layers)", "held if < 0 (one-sided sign-flip test, p < 0.05): rank falls with the layer at every depth; "
        "not held if > 0", tuple(evidence))


def layer_trend(ranks: np.ndarray) -> float:
    """Spearman's rho between the layer index and the layer's srank, for any number of layers from 2 (with
    two layers it is the sign of the change). A flat profile has no rank order, and C.spearman calls it
    undefined; here it is 0, because "the rank falls at every depth" must count a depth where it does not
    fall (a network collapsed to srank 1 in every layer) against the claim instead of skipping it."""
    from scipy import stats

    if np.ptp(ranks) == 0:  # sranks are whole numbers, so equal means equal
        return 0.0
    if len(ranks) == 2:  # exactly +-1 (scipy's value is 1 - 1e-16)
        return float(np.sign(ranks[1] - ranks[0]))
    return float(stats.spearmanr(np.arange(len(ranks)), ranks).statistic)


def claim_depth_returns(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="depth"):
        depths = sorted(m.values("depth", env=env, study="depth"))
        ret = {d: C.final_values(m, "return", env=env, study="depth", depth=d) for d in depths}
        gap = ret[depths[0]] - np.max([ret[d] for d in depths[1:]], axis=0)
        note = f"{depths[0]} layers - best deeper"
        if np.all(gap == 0):
            evidence.append(C.Evidence(env, "not testable here", note="every depth returned the same"))
        else:
            evidence.append(C.directional(env, gap, "greater", note=note))
    return C.Claim(
        "activation.depth_returns", "On bsuite, the deeper (4- and 8-layer) networks performed worse than the "
        "2-layer MLP (Appendix A.1).", "per seed, the final return of the shallowest network minus the best of the "
        "deeper ones", "held if > 0 (one-sided sign-flip test, p < 0.05); not held if < 0", tuple(evidence))


def claim_hessian(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="hessian", metric="hessian_near_zero"):
        thresholds = sorted(m.values("relative_threshold", env=env, metric="hessian_near_zero"), reverse=True)
        # the numerical zero n x eps, found by value: its place in the sorted list depends on n
        numerical = next(t for t in thresholds if t not in FIXED_NEAR_ZERO)
        share = lambda a, t: m.last(env=env, study="hessian", activation=a, relative_threshold=t,
                                    metric="hessian_near_zero")
        note = ", ".join(f"at {t:.1g}: relu {np.mean(share('relu', t)):.2f} vs elu {np.mean(share('elu', t)):.2f}"
                         for t in thresholds)
        evidence.append(C.directional(env, share("relu", numerical) - share("elu", numerical), "greater", note=note))
    return C.Claim(
        "activation.hessian", "The ReLU network concentrates most eigenvalues of the TD loss's Hessian around zero, "
        "more than the ELU network (Appendix A.2, Figs. 24 and 25).", "per seed, the share of eigenvalues with "
        "|lambda| <= t x max|lambda| at the float32 numerical zero t = n x eps (n parameters): ReLU's minus ELU's; "
        "the shares at t = 1e-3 and 1e-6 are listed", "held if > 0 (one-sided sign-flip test, p < 0.05); not held "
        "if < 0", tuple(evidence))


def claim_bottleneck_width(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="bottleneck"):
        rhos = []
        for layers in m.values("layers", env=env, study="bottleneck"):
            for lr in m.values("lr", env=env, study="bottleneck", layers=layers):
                where = {"env": env, "study": "bottleneck", "layers": layers, "lr": lr}
                widths = sorted(m.values("width", **where))
                ret = np.stack([C.final_values(m, "return", width=w, **where) for w in widths])
                rhos.append([C.spearman(widths, r) for r in ret.T])
        with C.quiet_nan_warnings():
            per_seed = np.nanmean(np.asarray(rhos), axis=0)  # over architectures and learning rates
        note = "" if np.isfinite(per_seed).sum() >= 2 else "every width returned the same"
        evidence.append(C.directional(env, per_seed, "greater", note=note))
    return C.Claim(
        "activation.bottleneck", "A smaller number of bottleneck units reduces the performance (Appendix A.13, "
        "Figs. 35 and 36).", "per seed, Spearman's rho between the bottleneck width and the final return, averaged "
        "over the two architectures and learning rates", "held if > 0 (one-sided sign-flip test, p < 0.05); not "
        "held if < 0", tuple(evidence))


def claim_bottleneck_lr(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="bottleneck"):
        diffs = []
        lrs = sorted(m.values("lr", env=env, study="bottleneck"))
        for layers in m.values("layers", env=env, study="bottleneck"):
            for width in m.values("width", env=env, study="bottleneck", layers=layers):
                where = {"env": env, "study": "bottleneck", "layers": layers, "width": width}
                diffs.append(C.final_values(m, "srank", lr=lrs[-1], **where) - C.final_values(m, "srank", lr=lrs[0],
                                                                                             **where))
        evidence.append(C.directional(env, np.mean(diffs, axis=0), "less", note=f"lr {lrs[-1]:g} - lr {lrs[0]:g}"))
    return C.Claim(
        "activation.bottleneck_lr", "With the larger learning rate, the effective ranks of the bottleneck networks "
        "tend to be lower (Appendix A.13, Figs. 35 and 36).", "per seed, final srank at the larger learning rate "
        "minus at the smaller, averaged over widths and architectures", "held if < 0 (one-sided sign-flip test, "
        "p < 0.05); not held if > 0", tuple(evidence))


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    out = []
    if m.has(study="activation"):
        out += [claim_relu_collapses_most(m), claim_relu_dormant(m), claim_relu_sparsity_grows(m)]
    if m.has(study="recurrent"):
        out.append(claim_lstm(m))
    if m.has(study="depth"):
        out += [claim_depth_layers(m), claim_depth_returns(m)]
    if m.has(study="hessian", metric="hessian_near_zero"):
        out.append(claim_hessian(m))
    if m.has(study="bottleneck"):
        out += [claim_bottleneck_width(m), claim_bottleneck_lr(m)]
    return out


# ------------------------------------------------------------------------------------------------
# Figures, from metrics.csv, gram.npz and hessian.npz: one function per figure
# ------------------------------------------------------------------------------------------------

ACT_COLORS = {"relu": "tab:red", "elu": "tab:blue", "tanh": "tab:green"}


def plot_activation(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 9: srank (and relative to initialisation: the claim), return, dead units and dormant
    fraction per activation."""
    envs = m.values("env", study="activation")
    claim = claim_relu_collapses_most(m)
    # (metric, label, log x, relative to step 0): the second row is the claim's statistic.
    panels = [("srank", "srank (probe batch of 512)", True, False),
              ("srank", "srank / srank at step 0\n(the claim's statistic)", True, True),
              ("return", "evaluation return", False, False),
              ("dead_units", "dead units (of 64;\nnone for ELU, tanh)", True, False),
              ("dormant_frac", "dormant fraction (tau = 0.025)", True, False)]
    # Constrained layout: with the default one, a figure this tall leaves a band under the title.
    fig, axes = plt.subplots(len(panels), len(envs), figsize=(4.2 * len(envs), 2.6 * len(panels)), squeeze=False,
                             layout="constrained")
    for j, env in enumerate(envs):
        for act in m.values("activation", env=env, study="activation"):
            for i, (metric, _, log_x, relative) in enumerate(panels):
                steps, grid = m.curves(env=env, study="activation", activation=act, metric=metric)
                values = grid / grid[:, :1] if relative else grid
                C.plot_band(axes[i, j], np.maximum(steps, 1) if log_x else steps, values, act if i == 0 else None,
                            ACT_COLORS.get(act))
        for i, (_, label, log_x, _) in enumerate(panels):
            axes[i, j].set(ylabel=label, xscale="log" if log_x else "linear")
        axes[0, j].set_title(f"{env}\n{claim.on(env, 56)}", fontsize=8)
        axes[-1, j].set_xlabel("gradient steps")
    axes[0, 0].legend(title="activation")
    fig.suptitle(f"Fig. 9: offline double DQN, 2x64 MLP, by activation "
                 f"({C.seeds_note(m, study='activation', env=envs[0])})")
    C.save_figure(fig, out, "fig09_activation_srank_return")


def plot_recurrent(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 10: LSTM cell activation on the memory task."""
    env = m.values("env", study="recurrent")[0]
    labels = {("lstm", "tanh"): ("LSTM, tanh cell", "tab:green"), ("lstm", "relu"): ("LSTM, ReLU cell", "tab:red"),
              ("mlp", "relu"): ("MLP (ReLU), last observation", "tab:gray")}
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for (network, act), (label, color) in labels.items():
        if not m.has(study="recurrent", network=network, activation=act):
            continue
        steps, grid = m.curves(study="recurrent", network=network, activation=act, metric="srank")
        C.plot_band(axes[0], np.maximum(steps, 1), grid, label, color)
        C.plot_band(axes[1], *m.curves(study="recurrent", network=network, activation=act, metric="return"), None,
                    color)
    axes[0].set(xscale="log", xlabel="gradient steps", ylabel="srank of the output features (of 64)")
    axes[1].set(xlabel="gradient steps", ylabel="evaluation return (+1 right, -1 wrong)")
    axes[0].legend()
    fig.suptitle(f"Fig. 10 (stand-in for DeepMind Lab): {env}, memory length {C.MEMORY_LENGTH} "
                 f"({C.seeds_note(m, study='recurrent')})")
    C.save_figure(fig, out, "fig10_lstm_cell_activation")


def plot_depth(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 23: srank of every layer at the start and the end, per depth."""
    envs = m.values("env", study="depth")
    depths = sorted(m.values("depth", env=envs[0], study="depth"))
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(depths)))
    fig, axes = plt.subplots(2, len(envs), figsize=(4.2 * len(envs), 6.4), squeeze=False)
    for j, env in enumerate(envs):
        for depth, color in zip(depths, colors):
            layers = np.arange(1, depth + 1)
            for step_index, style, label in ((0, ":", None), (-1, "-", f"{depth} layers")):
                values = np.stack([m.curves(env=env, study="depth", depth=depth, metric=f"srank_layer{k}")[1]
                                   [:, step_index] for k in layers], axis=1)
                mean, err = C.mean_and_stderr(values)
                axes[0, j].errorbar(layers, mean, err, color=color, ls=style, marker="o", ms=3, capsize=2,
                                    label=label)
            C.plot_band(axes[1, j], *m.curves(env=env, study="depth", depth=depth, metric="return"),
                        f"{depth} layers", color)
        axes[0, j].set(title=env, xlabel="hidden layer (1 = nearest the input)", ylabel="srank (of 64)")
        axes[1, j].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0, 0].legend(title="solid: end, dotted: init")
    fig.suptitle(f"Fig. 23: srank of every layer of ReLU MLPs (He init) of several depths "
                 f"({C.seeds_note(m, study='depth', env=envs[0])})")
    C.save_figure(fig, out, "fig23_depth_layer_srank")


def plot_bottleneck(plt, m: C.Metrics, out: Path, layers: int, number: int) -> None:
    """Fig. 35 (one 64-unit layer before the bottleneck) and Fig. 36 (two): srank and return per
    bottleneck width, at two learning rates."""
    env = m.values("env", study="bottleneck")[0]
    rates = sorted(m.values("lr", env=env, study="bottleneck", layers=layers))
    widths = sorted(m.values("width", env=env, study="bottleneck", layers=layers))
    colors = plt.cm.plasma(np.linspace(0.05, 0.8, len(widths)))
    fig, axes = plt.subplots(2, len(rates), figsize=(4.6 * len(rates), 6.2), squeeze=False)
    for j, lr in enumerate(rates):
        for width, color in zip(widths, colors):
            where = {"env": env, "study": "bottleneck", "layers": layers, "width": width, "lr": lr}
            steps, curves = m.curves(**where, metric="srank")
            C.plot_band(axes[0, j], np.maximum(steps, 1), curves, f"{width} units", color)
            C.plot_band(axes[1, j], *m.curves(**where, metric="return"), None, color)
        axes[0, j].set(xscale="log", ylabel="srank of the bottleneck layer", title=f"({'ab'[j % 2]}) learning rate {lr:g}")
        axes[1, j].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0, 0].legend(title="bottleneck width")
    shape = ", ".join(["64"] * layers + ["b"])
    fig.suptitle(f"Fig. {number}: {env}, ReLU MLP ({shape}) by bottleneck width b "
                 f"({C.seeds_note(m, study='bottleneck', env=env)})")
    C.save_figure(fig, out, f"fig{number}_bottleneck_width_{layers}_layer{'s' if layers > 1 else ''}")


def load_spectra(m: C.Metrics) -> dict[str, np.ndarray]:
    with np.load(m.run_dir / "hessian.npz") as f:
        return {k: f[k] for k in f.files}


def plot_hessian_spectrum(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 24: srank along training and the Hessian eigenvalue density after it."""
    spectra = load_spectra(m)
    acts = [a for a in ("relu", "elu") if any(k.startswith(a) for k in spectra)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for act in acts:
        steps, grid = m.curves(study="hessian", activation=act, metric="srank")
        C.plot_band(axes[0], np.maximum(steps, 1), grid, act, ACT_COLORS[act])
        eig = np.concatenate([v for k, v in spectra.items() if k.startswith(act)])
        axes[1].hist(eig, bins=80, density=True, histtype="step", lw=1.4, color=ACT_COLORS[act],
                     label=f"{act} ({len(eig)} eigenvalues, all seeds)")
    axes[0].set(xscale="log", xlabel="gradient steps", ylabel=f"srank (of {cfg.hessian_hidden})")
    axes[0].legend()
    axes[1].set(yscale="log", xlabel="Hessian eigenvalue", ylabel="density")
    axes[1].legend()
    fig.suptitle(f"Fig. 24: 1 x {cfg.hessian_hidden} hidden MLP on catch: srank, and the exact TD-loss Hessian's "
                 f"eigenvalue density after training ({C.seeds_note(m, study='hessian')})")
    C.save_figure(fig, out, "fig24_hessian_spectrum")


def plot_hessian_near_zero(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 25: the share of near-zero eigenvalues as the threshold moves, and the sorted spectra."""
    spectra = load_spectra(m)
    acts = [a for a in ("relu", "elu") if any(k.startswith(a) for k in spectra)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    grid = np.logspace(-9, 0, 91)
    for act in acts:
        shares = np.asarray([[near_zero_share(e, t) for t in grid] for n, e in spectra.items() if n.startswith(act)])
        mean, err = C.mean_and_stderr(shares)
        axes[0].plot(grid, mean, color=ACT_COLORS[act], label=act)
        axes[0].fill_between(grid, mean - err, mean + err, color=ACT_COLORS[act], alpha=0.2, lw=0)
        for i, (name, eig) in enumerate((n, e) for n, e in spectra.items() if n.startswith(act)):
            magnitude = np.sort(np.abs(eig))[::-1]
            axes[1].plot(np.arange(1, len(eig) + 1), np.maximum(magnitude / magnitude[0], 1e-12), color=ACT_COLORS[act],
                         lw=1.2, label=act if i == 0 else None)
    n = len(next(iter(spectra.values())))
    for t, style in zip(near_zero_thresholds(n), ("-", "--", ":")):
        axes[0].axvline(t, color="0.4", ls=style, lw=0.8)
        axes[1].axhline(t, color="0.4", ls=style, lw=0.8)
    axes[0].set(xscale="log", ylim=(0, 1), xlabel="threshold t (relative to max|λ|)",
                ylabel="share with |λ| ≤ t·max|λ|", title="near-zero share (solid line: the claim's t = n·eps)")
    axes[1].set(yscale="log", xlabel="eigenvalue index (by magnitude)", ylabel="|λ| / max|λ|", title="spectrum")
    axes[0].legend(), axes[1].legend()
    fig.suptitle(f"Fig. 25: distribution of the Hessian eigenvalues, ReLU against ELU ({C.seeds_note(m, study='hessian')})")
    C.save_figure(fig, out, "fig25_hessian_near_zero")


def plot_gram(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 37: Gram matrices of the last hidden layer, ReLU against ELU, start and end."""
    with np.load(m.run_dir / "gram.npz") as f:
        env, features = str(f["env"]), {k: f[k] for k in f.files if k != "env"}
    acts = [a for a in ("relu", "elu") if f"{a}_start" in features]
    fig, axes = plt.subplots(len(acts), 2, figsize=(7.6, 3.7 * len(acts)), squeeze=False)
    for i, act in enumerate(acts):
        for j, when in enumerate(("start", "end")):
            feats = features[f"{act}_{when}"][0]  # seed 0: (states, units)
            gram = feats @ feats.T
            image = axes[i, j].imshow(gram / max(np.abs(gram).max(), 1e-12), cmap="RdBu_r", vmin=-1, vmax=1)
            axes[i, j].set(title=f"{act}, {when} of training\n{np.mean(feats == 0):.0%} of activations exactly zero",
                           xlabel="probe state", ylabel="probe state" if j == 0 else None)
            axes[i, j].grid(False)
    fig.colorbar(image, ax=axes, shrink=0.6, label="Gram entry / max |entry|")
    fig.suptitle(f"Fig. 37: Gram matrices of the last hidden layer on {len(feats)} probe states, {env}, seed 0")
    C.save_figure(fig, out, "fig37_gram_sparsity")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    if m.has(study="activation"):
        plot_activation(plt, m, out)
    if m.has(study="recurrent"):
        plot_recurrent(plt, m, out)
    if m.has(study="depth"):
        plot_depth(plt, m, out)
    for layers, number in ((1, 35), (2, 36)):
        if m.has(study="bottleneck", layers=layers):
            plot_bottleneck(plt, m, out, layers, number)
    if m.has(study="hessian") and (m.run_dir / "hessian.npz").exists():
        plot_hessian_spectrum(plt, m, cfg, out)
        plot_hessian_near_zero(plt, m, out)
    if (m.run_dir / "gram.npz").exists():
        plot_gram(plt, m, out)


STUDY = C.Study("exp_activation", __doc__.split("\n\n")[0], PRESETS, run, claims, plot, parts=parts)

if __name__ == "__main__":
    C.main(STUDY)

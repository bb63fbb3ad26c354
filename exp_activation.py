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

Protocol. Offline double DQN (Huber loss, Adam 3e-4, batch 32, discount 0.99, target update every 100
steps) on a fixed locally collected dataset per environment (an online DQN's transitions with 10% of
its actions replaced by random ones, the RL Unplugged bsuite recipe). Every network is a separate
compiled program, so there is one trainer call per (environment, network) with the seeds (and, for
the bottleneck study, the learning rates) as vmapped members; members that share a seed start from
the same weights, and every network sees the same data and the same seeds. Every chunk: srank
(delta = 0.01), dead units and dormant fraction of the last hidden layer on a fixed 512-state probe
batch; ``num_evals`` times per run: online returns (greedy, ``eval_episodes`` episodes). The rows of
metrics.csv carry the sub-study in ``agent``: activation | recurrent | depth | bottleneck | hessian.

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
    when |lambda| <= 1e-3 * max|lambda| of the same Hessian.
  * Fig. 35/36: the paper's network sizes are lost from its text; here a 2-layer ReLU MLP (64, b)
    whose last (bottleneck) layer has b units, at learning rates 3e-4 and 3e-3.
  * Fig. 37: features of the last hidden layer on the first 64 states of the probe batch, for the
    ReLU and ELU networks of Fig. 9 on the first environment (seed 0), at initialisation and at the end.
    Sparsity = fraction of exactly-zero activations (``zero_frac`` in metrics.csv, on all 512 states).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import common as C

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------

Study = Literal["activation", "recurrent", "depth", "bottleneck", "hessian"]
STUDIES: tuple[Study, ...] = ("activation", "recurrent", "depth", "bottleneck", "hessian")


@dataclasses.dataclass(frozen=True)
class Config:
    env: tuple[str, ...]  # Fig. 9, 23 and 37 (Fig. 37 uses the first)
    seeds: int
    num_steps: int  # Fig. 9/37: ReLU, ELU, tanh
    depth_steps: int  # Fig. 23
    bottleneck_steps: int  # Fig. 35/36
    recurrent_steps: int  # Fig. 10
    hessian_steps: int  # Fig. 24/25
    chunk_steps: int
    early_chunk_steps: int
    num_evals: int  # online evaluations per run (every run's length must be a multiple of chunk_steps * num_evals)
    eval_episodes: int
    dataset_size: int
    activations: tuple[str, ...] = ("relu", "elu", "tanh")
    depths: tuple[int, ...] = (2, 4, 8)
    bottleneck_units: tuple[int, ...] = (2, 8, 32, 64)
    bottleneck_lrs: tuple[float, ...] = (3e-4, 3e-3)
    bottleneck_env: tuple[str, ...] = ("bsuite/catch",)
    recurrent_env: str = "bsuite/memory_len"
    hessian_env: str = "bsuite/catch"
    hessian_hidden: int = 16
    hessian_max_transitions: int = 4_096
    learning_rate: float = 3e-4
    batch_size: int = 32
    target_update_period: int = 100
    dataset_noise: float = 0.1
    gram_states: int = 64
    studies: tuple[Study, ...] = STUDIES


BSUITE = ("bsuite/catch", "bsuite/cartpole", "bsuite/mountain_car")

PRESETS = {
    # The paper's bsuite hyperparameters (batch 32, Adam 3e-4, discount 0.99, 2x64 where the study does not
    # vary the network) with the number of gradient steps scaled down from 1e6 so that all five sub-studies
    # (27 trainer calls of 2-4 members each) fit ~15 minutes on a 2-core CPU. The LSTM is the slowest
    # network per step (a scan over 11 observations inside every step), so its run is the shortest.
    "cpu": Config(env=BSUITE, seeds=2, num_steps=60_000, depth_steps=30_000, bottleneck_steps=40_000,
                  recurrent_steps=10_000, hessian_steps=60_000, chunk_steps=1_000, early_chunk_steps=100,
                  num_evals=10, eval_episodes=10, dataset_size=50_000),
    "paper": Config(env=BSUITE, seeds=5, num_steps=1_000_000, depth_steps=1_000_000, bottleneck_steps=1_000_000,
                    recurrent_steps=1_000_000, hessian_steps=1_000_000, chunk_steps=5_000, early_chunk_steps=500,
                    num_evals=20, eval_episodes=20, dataset_size=50_000),
    "smoke": Config(env=("bsuite/catch",), seeds=2, num_steps=400, depth_steps=200, bottleneck_steps=200,
                    recurrent_steps=200, hessian_steps=200, chunk_steps=100, early_chunk_steps=0, num_evals=1,
                    eval_episodes=3, dataset_size=2_000, depths=(2, 4), bottleneck_units=(4, 16)),
}


@dataclasses.dataclass(frozen=True)
class Args(C.StudyArgs):
    """Offline double DQN with ReLU, ELU and tanh networks, LSTM cell activations, depths, bottleneck
    widths: rank, dead units, sparsity and the Hessian spectrum."""

    num_steps: int | None = None
    """Gradient steps of the activation study (Fig. 9/37)."""
    depth_steps: int | None = None
    """Gradient steps of the depth study (Fig. 23)."""
    bottleneck_steps: int | None = None
    """Gradient steps of the bottleneck-width study (Fig. 35/36)."""
    recurrent_steps: int | None = None
    """Gradient steps of the LSTM study on bsuite/memory_len (Fig. 10)."""
    hessian_steps: int | None = None
    """Gradient steps before the Hessian of the one-hidden-layer networks is taken (Fig. 24/25)."""
    studies: tuple[Study, ...] | None = None
    """Sub-studies to run (default: all); figures of the others are skipped."""


def act_label(act: str) -> str:
    return f"act={act}"


def bottleneck_label(units: int, lr: float) -> str:
    return f"bottleneck={units},lr={lr:g}"


# ------------------------------------------------------------------------------------------------
# The experiment's own pieces: a last-observation MLP, per-layer ranks, sparsity, the exact Hessian
# ------------------------------------------------------------------------------------------------


class LastObservationMLP(nn.Module):
    """The feed-forward baseline of Fig. 10: a ReLU MLP that reads only the last observation of the
    (batch, time, ...) history the recurrent agents read."""

    num_actions: int
    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return C.MLP(self.num_actions, self.hidden, "relu")(obs[:, -1])


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
    flat, unravel = ravel_pytree(params)

    def weighted_loss(flat, b, w):
        q_both, _ = net.apply(unravel(flat), jnp.concatenate([b.obs, b.next_obs]))
        q_tm1, q_selector = jnp.split(q_both, 2)
        q_value, _ = net.apply(target_params, b.next_obs)
        td = C.double_q_td_error(q_tm1, b.action, b.reward, gamma * b.discount, q_value,
                                 jax.lax.stop_gradient(q_selector))
        return jnp.sum(w * C.huber(td))

    hessian = jax.jit(jax.hessian(weighted_loss))
    n = len(weights)
    pad = -n % chunk  # zero-weight padding: one compiled shape for every chunk
    batch = jax.tree_util.tree_map(lambda x: np.concatenate([x, np.repeat(x[:1], pad, axis=0)]), batch)
    weights = np.concatenate([weights, np.zeros(pad, np.float32)])
    total = np.zeros((flat.size, flat.size))
    for start in range(0, n + pad, chunk):
        part = jax.tree_util.tree_map(lambda x: jnp.asarray(x[start:start + chunk]), batch)
        total += np.asarray(hessian(flat, part, jnp.asarray(weights[start:start + chunk])), np.float64)
    total /= weights.sum()
    return np.linalg.eigvalsh(0.5 * (total + total.T))


NEAR_ZERO = 1e-3  # an eigenvalue is near zero when |lambda| <= NEAR_ZERO * max|lambda|


def near_zero_share(eigenvalues: np.ndarray) -> float:
    scale = np.max(np.abs(eigenvalues))
    return float(np.mean(np.abs(eigenvalues) <= NEAR_ZERO * scale)) if scale > 0 else 1.0


def member_rows(env: str, agent: str, members: Sequence[C.Member], step: int, metric: str, values) -> list[dict]:
    return [{"env": env, "agent": agent, "config": m.config, "seed": m.seed, "step": step, "metric": metric,
             "value": float(v)} for m, v in zip(members, np.asarray(values, np.float64))]


# ------------------------------------------------------------------------------------------------
# run(): the five sub-studies, each a list of trainer calls; metrics.csv, gram.npz, hessian.npz
# ------------------------------------------------------------------------------------------------


def train(cfg: Config, out: Path, net: nn.Module, ds: C.Dataset, env_id: str, agent: str,
          members: list[C.Member], steps: int, history: int = 1, early_chunks: bool = True) -> C.TrainResult:
    """One trainer call: double DQN, ``cfg.num_evals`` online evaluations. ``early_chunks`` splits the
    first chunk (phase 1 resolved in srank curves; one more compiled program, so the depth study,
    which plots only end-of-training ranks, goes without)."""
    if steps % (cfg.chunk_steps * cfg.num_evals):
        raise ValueError(f"{agent} run length {steps} must be a multiple of chunk_steps * num_evals "
                         f"= {cfg.chunk_steps * cfg.num_evals}")
    train_cfg = C.TrainConfig(loss="double_dqn", num_steps=steps, chunk_steps=cfg.chunk_steps,
                              early_chunk_steps=cfg.early_chunk_steps if early_chunks else 0,
                              batch_size=cfg.batch_size,
                              target_update_period=cfg.target_update_period, eval_every=steps // cfg.num_evals)

    def evaluate(params):
        return C.evaluate_policies(net, params, env_id, cfg.eval_episodes, seed=10_000, history=history).mean(axis=1)

    return C.train_offline(net, ds, train_cfg, members, env_id=env_id, agent=agent, evaluate_fn=evaluate,
                           checkpoint_dir=out / "checkpoints", run_name="exp_activation")


def seed_members(cfg: Config, config: str, lr: float | None = None) -> list[C.Member]:
    return [C.Member(seed=s, learning_rate=lr or cfg.learning_rate, config=config) for s in range(cfg.seeds)]


def dataset(cfg: Config, env_id: str, history: int = 1) -> tuple[C.Dataset, jax.Array]:
    """The environment's offline dataset and the trainer's fixed 512-state probe batch."""
    ds = C.offline_dataset(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size, seed=0,
                           history=history)
    return ds, ds.stacked_obs(jnp.asarray(C.probe_rows(ds, C.TrainConfig().probe_size)))


def run_activation(cfg: Config, out: Path) -> list[dict]:
    """Fig. 9 and 37: 2x64 MLPs with each activation; sparsity at the start and end; Gram features."""
    rows, gram = [], {}
    for env_id in cfg.env:
        ds, probe = dataset(cfg, env_id)
        for act in cfg.activations:
            net = C.MLP(ds.num_actions, (64, 64), act)
            members = seed_members(cfg, act_label(act))
            result = train(cfg, out, net, ds, env_id, "activation", members, cfg.num_steps)
            rows += result.rows
            start = C.initial_params(net, probe[:1], [m.seed for m in members])  # the trainer's initial weights
            for step, when, params in ((0, "start", start), (cfg.num_steps, "end", result.state.params)):
                features = penultimate_features(net, params, probe)
                rows += member_rows(env_id, "activation", members, step, "zero_frac",
                                    np.mean(features == 0, axis=(1, 2)))
                if env_id == cfg.env[0] and act in ("relu", "elu"):
                    gram[f"{act}_{when}"] = features[:, :cfg.gram_states]
    np.savez(out / "gram.npz", env=np.asarray(cfg.env[0]), **gram)
    return rows


def run_recurrent(cfg: Config, out: Path) -> list[dict]:
    """Fig. 10 (stand-in on bsuite/memory_len): LSTM with tanh / ReLU cell activation, ReLU MLP."""
    history = C.MEMORY_LENGTH + 1
    ds, _ = dataset(cfg, cfg.recurrent_env, history)
    nets = {"lstm=tanh": C.RecurrentQNetwork(ds.num_actions, 64, "tanh"),
            "lstm=relu": C.RecurrentQNetwork(ds.num_actions, 64, "relu"),
            "mlp=relu": LastObservationMLP(ds.num_actions)}
    rows = []
    for label, net in nets.items():
        result = train(cfg, out, net, ds, cfg.recurrent_env, "recurrent", seed_members(cfg, label),
                       cfg.recurrent_steps, history)
        rows += result.rows
    return rows


def run_depth(cfg: Config, out: Path) -> list[dict]:
    """Fig. 23: ReLU MLPs (He init) of several depths; srank of every layer at the start and end."""
    rows = []
    for env_id in cfg.env:
        ds, probe = dataset(cfg, env_id)
        for depth in cfg.depths:
            net = C.MLP(ds.num_actions, (64,) * depth, "relu", init_scheme="he")
            members = seed_members(cfg, f"depth={depth}")
            result = train(cfg, out, net, ds, env_id, "depth", members, cfg.depth_steps, early_chunks=False)
            rows += result.rows
            start = C.initial_params(net, probe[:1], [m.seed for m in members])
            for step, params in ((0, start), (cfg.depth_steps, result.state.params)):
                ranks = layer_sranks(net, params, probe)
                for layer in range(depth):
                    rows += member_rows(env_id, "depth", members, step, f"srank_layer{layer + 1}", ranks[:, layer])
    return rows


def run_bottleneck(cfg: Config, out: Path) -> list[dict]:
    """Fig. 35/36: a (64, b) ReLU MLP for each bottleneck width b, seeds x learning rates as members."""
    rows = []
    for env_id in cfg.bottleneck_env:
        ds, _ = dataset(cfg, env_id)
        for units in cfg.bottleneck_units:
            members = [C.Member(seed=s, learning_rate=lr, config=bottleneck_label(units, lr))
                       for lr in cfg.bottleneck_lrs for s in range(cfg.seeds)]
            rows += train(cfg, out, C.MLP(ds.num_actions, (64, units), "relu"), ds, env_id, "bottleneck", members,
                          cfg.bottleneck_steps).rows
    return rows


def run_hessian(cfg: Config, out: Path) -> tuple[list[dict], dict]:
    """Fig. 24/25: one-hidden-layer ReLU and ELU networks; the exact TD-loss Hessian after training."""
    ds, _ = dataset(cfg, cfg.hessian_env)
    batch, weights, exact = distinct_transitions(ds, cfg.hessian_max_transitions)
    rows, spectra, info = [], {}, {}
    for act in ("relu", "elu"):
        net = C.MLP(ds.num_actions, (cfg.hessian_hidden,), act)
        members = seed_members(cfg, act_label(act))
        result = train(cfg, out, net, ds, cfg.hessian_env, "hessian", members, cfg.hessian_steps)
        rows += result.rows
        shares, tops = [], []
        for m, member in enumerate(members):
            eig = td_hessian_eigenvalues(net, C.unstack(result.state.params, m),
                                         C.unstack(result.state.target_params, m), batch, weights,
                                         C.TrainConfig().gamma)
            spectra[f"{act}_seed{member.seed}"] = eig
            shares.append(near_zero_share(eig))
            tops.append(np.max(np.abs(eig)))
        rows += member_rows(cfg.hessian_env, "hessian", members, cfg.hessian_steps, "hessian_near_zero", shares)
        rows += member_rows(cfg.hessian_env, "hessian", members, cfg.hessian_steps, "hessian_max_abs_eig", tops)
        info["num_params"] = int(ravel_pytree(C.unstack(result.state.params, 0))[0].size)
    info |= {"hidden": cfg.hessian_hidden, "transitions": len(ds), "distinct_transitions_used": len(weights),
             "exact_over_dataset": bool(exact), "near_zero": f"|lambda| <= {NEAR_ZERO:g} * max|lambda|"}
    np.savez(out / "hessian.npz", **spectra)
    return rows, info


def run(cfg: Config, out: Path) -> dict:
    C.check_env_ids((*cfg.env, *cfg.bottleneck_env, cfg.recurrent_env, cfg.hessian_env))
    rows, extra = [], {}
    if "activation" in cfg.studies:
        rows += run_activation(cfg, out)
    if "recurrent" in cfg.studies:
        rows += run_recurrent(cfg, out)
    if "depth" in cfg.studies:
        rows += run_depth(cfg, out)
    if "bottleneck" in cfg.studies:
        rows += run_bottleneck(cfg, out)
    if "hessian" in cfg.studies:
        hessian_rows, extra["hessian"] = run_hessian(cfg, out)
        rows += hessian_rows
    C.write_metrics(out, rows)
    return extra


# ------------------------------------------------------------------------------------------------
# Claims, computed from metrics.csv alone
# ------------------------------------------------------------------------------------------------


def final_mean(m: C.Metrics, **where) -> float:
    """Seed mean of the last recorded value of the matching rows (NaN if there are none)."""
    if not m.select(**where):
        return float("nan")
    return float(C.mean_and_stderr(m.final(**where))[0])


def short(env: str) -> str:
    return env.split("/")[-1]


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    out = []

    def add(cid, text, statistic, agent, compute):
        if not m.select(agent=agent):
            out.append(C.Claim(cid, text, statistic, "not run", None))
            return
        value, held = compute()
        out.append(C.Claim(cid, text, statistic, value, held))

    def relu_lowest():
        parts, held = [], True
        for env in m.values("env", agent="activation"):
            s = {a: final_mean(m, env=env, agent="activation", config=act_label(a), metric="srank")
                 for a in ("relu", "elu", "tanh")}
            held &= s["relu"] < s["elu"] and s["relu"] < s["tanh"]
            parts.append(f"{short(env)}: relu {s['relu']:.1f} / elu {s['elu']:.1f} / tanh {s['tanh']:.1f}")
        return "; ".join(parts), bool(held)

    def relu_sparser():
        parts, held = [], True
        for env in m.values("env", agent="activation"):
            get = lambda a, metric: final_mean(m, env=env, agent="activation", config=act_label(a), metric=metric)
            dead, zero = {a: get(a, "dead_units") for a in ("relu", "elu")}, {a: get(a, "zero_frac") for a in ("relu", "elu")}
            held &= dead["relu"] > dead["elu"] and zero["relu"] > zero["elu"]
            parts.append(f"{short(env)}: dead {dead['relu']:.1f} vs {dead['elu']:.1f}, "
                         f"zero frac {zero['relu']:.2f} vs {zero['elu']:.2f}")
        return "; ".join(parts), bool(held)

    def lstm_tanh_highest():
        s = {c: final_mean(m, agent="recurrent", config=c, metric="srank") for c in ("lstm=tanh", "lstm=relu", "mlp=relu")}
        return (f"LSTM tanh {s['lstm=tanh']:.1f}, LSTM relu {s['lstm=relu']:.1f}, MLP relu {s['mlp=relu']:.1f}",
                bool(s["lstm=tanh"] > s["lstm=relu"] and s["lstm=tanh"] > s["mlp=relu"]))

    def deeper_no_higher():
        parts, held = [], True
        for env in m.values("env", agent="depth"):
            configs = m.values("config", env=env, agent="depth")
            s = {c: final_mean(m, env=env, agent="depth", config=c, metric="srank") for c in configs}
            base = s.get("depth=2", float("nan"))
            held &= all(v <= base for c, v in s.items() if c != "depth=2")
            parts.append(f"{short(env)}: " + ", ".join(f"{c.split('=')[1]} layers {v:.1f}" for c, v in s.items()))
        return "; ".join(parts), bool(held)

    def hessian_flatter():
        share = {a: final_mean(m, agent="hessian", config=act_label(a), metric="hessian_near_zero")
                 for a in ("relu", "elu")}
        return f"relu {share['relu']:.3f} vs elu {share['elu']:.3f}", bool(share["relu"] > share["elu"])

    add("activation.1", "ReLU's srank ends lower than ELU's and tanh's on each bsuite task",
        "final srank, seed mean, per env (relu / elu / tanh)", "activation", relu_lowest)
    add("activation.2", "ReLU has more dead units, and sparser features, than ELU",
        "final dead units (of 64) and fraction of exactly-zero activations on the 512-state probe, seed mean, "
        "relu vs elu, per env", "activation", relu_sparser)
    add("activation.3", "The tanh LSTM keeps a higher srank than the ReLU LSTM and the ReLU MLP "
        "(bsuite/memory_len, standing in for DeepMind Lab)", "final srank of the output features, seed mean",
        "recurrent", lstm_tanh_highest)
    add("activation.4", "Deeper ReLU networks end with a penultimate srank no higher than the 2-layer network's",
        "final penultimate-layer srank, seed mean, per env and depth", "depth", deeper_no_higher)
    add("activation.5", "The ReLU network has a larger share of near-zero Hessian eigenvalues than the ELU network",
        f"share of eigenvalues with |lambda| <= {NEAR_ZERO:g} max|lambda| of the exact TD-loss Hessian "
        f"(1 x {cfg.hessian_hidden} hidden, catch), seed mean", "hessian", hessian_flatter)
    return out


# ------------------------------------------------------------------------------------------------
# plot(): every figure from metrics.csv, gram.npz and hessian.npz
# ------------------------------------------------------------------------------------------------

ACT_COLORS = {"relu": "tab:red", "elu": "tab:blue", "tanh": "tab:green"}


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    if m.select(agent="activation"):
        plot_activation(plt, m, out)
    if m.select(agent="recurrent"):
        plot_recurrent(plt, m, out)
    if m.select(agent="depth"):
        plot_depth(plt, m, out)
    if m.select(agent="bottleneck"):
        plot_bottleneck(plt, m, out)
    if m.select(agent="hessian") and (out / "hessian.npz").exists():
        plot_hessian(plt, m, cfg, out)
    if (out / "gram.npz").exists():
        plot_gram(plt, m, out)


def plot_activation(plt, m: C.Metrics, out: Path) -> None:
    envs = m.values("env", agent="activation")
    panels = [("srank", "srank (probe batch of 512)", True), ("return", "evaluation return", False),
              ("dead_units", "dead units (of 64)", True), ("dormant_frac", "dormant fraction (tau = 0.025)", True)]
    fig, axes = plt.subplots(len(panels), len(envs), figsize=(4.2 * len(envs), 2.6 * len(panels)), squeeze=False)
    for j, env in enumerate(envs):
        for config in m.values("config", env=env, agent="activation"):
            act = config.split("=")[1]
            for i, (metric, _, log_x) in enumerate(panels):
                steps, grid = m.curves(env=env, agent="activation", config=config, metric=metric)
                C.plot_band(axes[i, j], np.maximum(steps, 1) if log_x else steps, grid,
                            act if i == 0 else None, ACT_COLORS.get(act))
        for i, (_, label, log_x) in enumerate(panels):
            axes[i, j].set(ylabel=label, xscale="log" if log_x else "linear")
        axes[0, j].set_title(env)
        axes[-1, j].set_xlabel("gradient steps")
    axes[0, 0].legend(title="activation")
    fig.suptitle(f"Fig. 9: offline double DQN, 2x64 MLP, by activation "
                 f"({C.seeds_note(m, agent='activation', env=envs[0])})")
    C.save_figure(fig, out, "fig09_activation_srank_return")


def plot_recurrent(plt, m: C.Metrics, out: Path) -> None:
    env = m.values("env", agent="recurrent")[0]
    labels = {"lstm=tanh": ("LSTM, tanh cell", "tab:green"), "lstm=relu": ("LSTM, ReLU cell", "tab:red"),
              "mlp=relu": ("MLP (ReLU), last observation", "tab:gray")}
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for config in m.values("config", agent="recurrent"):
        label, color = labels.get(config, (config, None))
        steps, grid = m.curves(agent="recurrent", config=config, metric="srank")
        C.plot_band(axes[0], np.maximum(steps, 1), grid, label, color)
        C.plot_band(axes[1], *m.curves(agent="recurrent", config=config, metric="return"), None, color)
    axes[0].set(xscale="log", xlabel="gradient steps", ylabel="srank of the output features (of 64)")
    axes[1].set(xlabel="gradient steps", ylabel="evaluation return (+1 right, -1 wrong)")
    axes[0].legend()
    fig.suptitle(f"Fig. 10 (stand-in for DeepMind Lab): {env}, memory length {C.MEMORY_LENGTH} "
                 f"({C.seeds_note(m, agent='recurrent')})")
    C.save_figure(fig, out, "fig10_lstm_cell_activation")


def plot_depth(plt, m: C.Metrics, out: Path) -> None:
    envs = m.values("env", agent="depth")
    configs = m.values("config", env=envs[0], agent="depth")
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(configs)))
    fig, axes = plt.subplots(2, len(envs), figsize=(4.2 * len(envs), 6.4), squeeze=False)
    for j, env in enumerate(envs):
        for config, color in zip(configs, colors):
            depth = int(config.split("=")[1])
            layers = np.arange(1, depth + 1)
            for step_index, style, label in ((0, ":", None), (-1, "-", f"{depth} layers")):
                values = np.stack([m.curves(env=env, agent="depth", config=config, metric=f"srank_layer{k}")[1]
                                   [:, step_index] for k in layers], axis=1)
                mean, err = C.mean_and_stderr(values)
                axes[0, j].errorbar(layers, mean, err, color=color, ls=style, marker="o", ms=3, capsize=2,
                                    label=label)
            C.plot_band(axes[1, j], *m.curves(env=env, agent="depth", config=config, metric="return"),
                        f"{depth} layers", color)
        axes[0, j].set(title=env, xlabel="hidden layer (1 = nearest the input)", ylabel="srank (of 64)")
        axes[1, j].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0, 0].legend(title="solid: end, dotted: init")
    fig.suptitle(f"Fig. 23: srank of every layer of ReLU MLPs (He init) of several depths "
                 f"({C.seeds_note(m, agent='depth', env=envs[0])})")
    C.save_figure(fig, out, "fig23_depth_layer_srank")


def plot_bottleneck(plt, m: C.Metrics, out: Path) -> None:
    env = m.values("env", agent="bottleneck")[0]
    configs = m.values("config", env=env, agent="bottleneck")
    lrs = list(dict.fromkeys(c.split(",lr=")[1] for c in configs))
    units = list(dict.fromkeys(c.split(",")[0] for c in configs))
    colors = plt.cm.plasma(np.linspace(0.05, 0.8, len(units)))
    fig, axes = plt.subplots(2, len(lrs), figsize=(4.6 * len(lrs), 6.2), squeeze=False)
    for j, lr in enumerate(lrs):
        for unit, color in zip(units, colors):
            config = f"{unit},lr={lr}"
            steps, grid = m.curves(env=env, agent="bottleneck", config=config, metric="srank")
            C.plot_band(axes[0, j], np.maximum(steps, 1), grid, f"{unit.split('=')[1]} units", color)
            C.plot_band(axes[1, j], *m.curves(env=env, agent="bottleneck", config=config, metric="return"), None, color)
        axes[0, j].set(xscale="log", ylabel="srank of the bottleneck layer", title=f"({'ab'[j % 2]}) learning rate {lr}")
        axes[1, j].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0, 0].legend(title="bottleneck width")
    fig.suptitle(f"Fig. 35/36: {env}, ReLU MLP (64, b) by bottleneck width b "
                 f"({C.seeds_note(m, agent='bottleneck', env=env)})")
    C.save_figure(fig, out, "fig35_bottleneck_width")


def plot_hessian(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    with np.load(out / "hessian.npz") as f:
        spectra = {k: f[k] for k in f.files}
    acts = [a for a in ("relu", "elu") if any(k.startswith(a) for k in spectra)]
    note = C.seeds_note(m, agent="hessian")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for act in acts:
        steps, grid = m.curves(agent="hessian", config=act_label(act), metric="srank")
        C.plot_band(axes[0], np.maximum(steps, 1), grid, act, ACT_COLORS[act])
        eig = np.concatenate([v for k, v in spectra.items() if k.startswith(act)])
        axes[1].hist(eig, bins=80, density=True, histtype="step", lw=1.4, color=ACT_COLORS[act],
                     label=f"{act} ({len(eig)} eigenvalues, all seeds)")
    axes[0].set(xscale="log", xlabel="gradient steps", ylabel=f"srank (of {cfg.hessian_hidden})")
    axes[0].legend()
    axes[1].set(yscale="log", xlabel="Hessian eigenvalue", ylabel="density")
    axes[1].legend()
    fig.suptitle(f"Fig. 24: 1 x {cfg.hessian_hidden} hidden MLP on catch: srank, and the exact TD-loss Hessian's "
                 f"eigenvalue density after training ({note})")
    C.save_figure(fig, out, "fig24_hessian_spectrum")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k, act in enumerate(acts):
        shares = m.final(agent="hessian", config=act_label(act), metric="hessian_near_zero")
        mean, err = C.mean_and_stderr(shares)
        axes[0].bar(k, mean, yerr=err, capsize=3, color=ACT_COLORS[act], alpha=0.7)
        axes[0].plot(np.full(len(shares), k), shares, "k.", ms=5)
        for i, (name, eig) in enumerate((n, e) for n, e in spectra.items() if n.startswith(act)):
            magnitude = np.sort(np.abs(eig))[::-1]
            axes[1].plot(np.arange(1, len(eig) + 1), np.maximum(magnitude, 1e-12), color=ACT_COLORS[act], lw=1.2,
                         label=act if i == 0 else None)
            axes[1].axhline(NEAR_ZERO * magnitude[0], color=ACT_COLORS[act], ls=":", lw=0.8)
    axes[0].set_xticks(range(len(acts)), acts)
    axes[0].set(ylim=(0, 1), ylabel=f"share with |λ| ≤ {NEAR_ZERO:g}·max|λ|", title="near-zero eigenvalues")
    axes[1].set(yscale="log", xlabel="eigenvalue index (by magnitude)", ylabel="|λ|",
                title="spectrum (dotted: near-zero threshold)")
    axes[1].legend()
    fig.suptitle(f"Fig. 25: distribution of the Hessian eigenvalues, ReLU against ELU ({note})")
    C.save_figure(fig, out, "fig25_hessian_near_zero")


def plot_gram(plt, m: C.Metrics, out: Path) -> None:
    with np.load(out / "gram.npz") as f:
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


# ------------------------------------------------------------------------------------------------


def main(args: Args) -> None:
    C.run_study(args, PRESETS, run=run, claims=claims, plot=plot)


if __name__ == "__main__":
    C.cli(Args, main)

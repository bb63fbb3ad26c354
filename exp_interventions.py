"""Interventions on rank and their average treatment effects (Sections 5 and 8.2, Appendices A.4, A.6
and A.10; Tables 1 and 3, Figures 1, 7, 8, 16 and 27 of Gulcehre et al. 2022).

Tables 1 and 3; figures 1 (srank against return, a narrow setting against the whole sweep), 7
(final srank against return per activation), 8 (effects of pairs of interventions), 16 (CURL weight
sweep) and 27 (with and without SAM).

    make exp_interventions                      # cpu preset: MinAtar space_invaders and breakout
    python exp_interventions.py --preset paper --data-dir /data/dqn_replay   # Atari Asterix, Gravitar
    python exp_interventions.py --plot-only     # redraw figures and tables from metrics.csv
    python exp_interventions.py --help          # every setting, with the chosen preset's value

Analysis (from metrics.csv alone):
  * Table 3: the average treatment effect (ATE) of each intervention on the final srank, the
    difference of mean final srank between the runs with and without it, pooled over the design and
    the games, with its standard error sqrt(s1^2/n1 + s0^2/n0). Fig. 8: for each pair, the effect of
    changing both from control (runs with both vs runs with neither) and their interaction (the
    effect of one with the other treated, minus with it at control).
  * Table 1: the ATE on normalised return of "srank above its q-quantile" (Appendix A.10's
    thresholded intervention on rank), within ReLU runs, tanh runs and both, per game, with a
    one-sided permutation p-value (H1: high srank raises return; exact over all relabellings
    when there are at most `permutations` of them, else Monte Carlo). Return is normalised so that
    0 is a uniformly random policy and 1 the mean episode return of the dataset's behaviour.
  * Fig. 1 / 7: srank against return over the sweep, per activation and combined, with Pearson and
    Spearman correlations. Fig. 27: srank and return along training with and without SAM.
  * Fig. 16: a separate sweep over the CURL weight in the control setting (0 to a large weight).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import common as C

@dataclasses.dataclass(frozen=True)
class Config:
    """Offline double DQN under a factorial design of interventions: ATEs on srank and on return."""

    env: tuple[str, ...]
    """Environment ids (the paper's "level" factor: two games)."""
    seeds: int
    """Training seeds per configuration of the design."""
    num_steps: int
    """Gradient steps per run."""
    chunk_steps: int
    """Gradient steps per compiled call; the probe metrics are taken after each."""
    eval_every: int
    """Gradient steps between online evaluations."""
    eval_episodes: int
    """Greedy evaluation episodes per member and evaluation."""
    batch_size: int
    """Minibatch size."""
    learning_rate: float
    """Learning rate of the control setting."""
    treatment_learning_rate: float
    """Learning rate when the learning rate is the treatment."""
    target_update_period: int
    """Target-network period of the control setting."""
    treatment_target_update_period: int
    """Target-network period when it is the treatment."""
    sam_rho: float
    """SAM radius when SAM is the treatment (control: 0, no SAM)."""
    curl_weight: float
    """CURL loss weight when CURL is the treatment (control: 0)."""
    data_fraction: float
    """Fraction of the dataset when the data split is the treatment (control: all of it)."""
    design: Literal["full", "half", "quarter"]
    """Which fraction of the 2^6 factorial to run (full: 64 configurations per environment)."""
    curl_sweep_weights: tuple[float, ...]
    """CURL weights of the Fig. 16 sweep, in the control setting otherwise."""
    curl_sweep_env: tuple[str, ...]
    """Environments of the CURL sweep (it runs on those that are also in --env)."""
    curl_sweep_seeds: int
    """Seeds per weight of the CURL sweep."""
    dataset_noise: float
    """bsuite/MinAtar collection: probability of a random action in the behaviour policy."""
    dataset_size: int
    """bsuite/MinAtar collection: transitions in the dataset."""
    quantiles: tuple[float, ...] = (0.25, 0.5, 0.75, 0.95)
    """Quantiles of srank that define "high rank" in Table 1."""
    permutations: int = 20_000
    """Permutations of Table 1's one-sided test (exact when there are at most this many relabellings)."""
    reference_episodes: int = 32
    """Episodes of the uniformly random policy (the normalisation's 0)."""
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
        C.check_env_ids((*self.env, *self.curl_sweep_env))
        C.require_positive(self, "seeds", "num_steps", "chunk_steps", "eval_every", "eval_episodes", "batch_size",
                           "learning_rate", "treatment_learning_rate", "target_update_period",
                           "treatment_target_update_period", "sam_rho", "curl_weight", "curl_sweep_seeds",
                           "permutations", "reference_episodes", "probe_size")
        C.require_fraction(self, "data_fraction", "quantiles")
        C.require(all(w >= 0 for w in self.curl_sweep_weights), "--curl-sweep-weights must be >= 0")
        C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        C.require_multiple(self, "num_steps", "chunk_steps")
        C.require_multiple(self, "eval_every", "chunk_steps")


PRESETS = {
    # MinAtar, datasets of 50k transitions made locally. space_invaders (dense rewards) stands in
    # for Asterix, breakout (sparser) for Gravitar: on MinAtar asterix the collecting DQN does not
    # learn within 50k transitions (its data score 0.56 per episode, a random policy 0.53), which
    # would leave no returns to compare. Measured on 2 CPU cores with 16 members vmapped: 570
    # member-steps/s plain, 450 with CURL, 370 with SAM, 270 with both; 2 games x 16 configurations
    # x 1e4 steps and the CURL sweep (4 weights x 2 seeds per game) fit ~20 min. Scaled down from
    # the paper: the target periods 2500 -> 200 become 1000 -> 100 (a 1e4-step run would see 4
    # target updates at 2500); the learning rates are the bsuite default and 10x it.
    "cpu": Config(env=("minatar/space_invaders", "minatar/breakout"), seeds=1, num_steps=10_000, chunk_steps=500,
                  eval_every=2_500, eval_episodes=8, batch_size=32, learning_rate=3e-4, treatment_learning_rate=3e-3,
                  target_update_period=1_000, treatment_target_update_period=100, sam_rho=0.05, curl_weight=1e-3,
                  data_fraction=0.05, design="quarter", curl_sweep_weights=(0.0, 1e-3, 0.1, 1.0),
                  curl_sweep_env=("minatar/space_invaders", "minatar/breakout"), curl_sweep_seeds=2,
                  dataset_noise=0.1, dataset_size=50_000),
    # The paper's DQN-interventions: 2e7 steps at batch 256, Atari Asterix and Gravitar, the full
    # factorial (128 runs), control learning rate 3e-5 (Appendix A.12).
    "paper": Config(env=("atari/Asterix", "atari/Gravitar"), seeds=1, num_steps=20_000_000, chunk_steps=10_000,
                    eval_every=1_000_000, eval_episodes=10, batch_size=256, learning_rate=3e-5,
                    treatment_learning_rate=3e-4, target_update_period=2_500, treatment_target_update_period=200,
                    sam_rho=0.05, curl_weight=1e-3, data_fraction=0.05, design="full",
                    curl_sweep_weights=(0.0, 1e-3, 0.1, 1.0), curl_sweep_env=("atari/Asterix", "atari/Gravitar"),
                    curl_sweep_seeds=3, dataset_noise=0.0, dataset_size=0, replay_checkpoints=(0, 1, 2, 3)),
    "smoke": Config(env=("bsuite/catch",), seeds=1, num_steps=400, chunk_steps=200, eval_every=200, eval_episodes=2,
                    batch_size=32, learning_rate=3e-4, treatment_learning_rate=3e-3, target_update_period=100,
                    treatment_target_update_period=20, sam_rho=0.05, curl_weight=1e-3, data_fraction=0.05,
                    design="quarter", curl_sweep_weights=(0.0, 1.0), curl_sweep_env=("bsuite/catch",),
                    curl_sweep_seeds=2, dataset_noise=0.1, dataset_size=2_000, permutations=2_000,
                    reference_episodes=8),
}


# ------------------------------------------------------------------------------------------------
# run(): the method
# ------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path, timings: C.Timings) -> dict:
    """Offline double DQN (Huber TD loss, Adam, target network) in a control setting (ReLU, the
    control learning rate and target period, no SAM, no CURL, all of the data) and under six
    interventions, each switching one setting to its treatment: activation ReLU -> tanh, learning
    rate, target period, SAM radius 0 -> rho (Foret et al. 2021), CURL weight 0 -> w (Laskin et
    al. 2020), data 100% -> a fraction. The runs form a two-level factorial design over the six
    factors, crossed with the environments. Activation and SAM change the compiled program, so
    each (activation, SAM) group of the design is one program whose members are its other
    settings x seeds; every configuration of one seed starts from the same initial weights. Per
    environment also: the random policy's and the data's returns (the normalisation), and a
    sweep over the CURL weight in the control setting (Fig. 16)."""
    fs = factors(cfg)
    design = fractional_factorial(len(fs), GENERATORS[cfg.design])
    rows = []
    for env_id in cfg.env:
        with timings("collect"):
            ds = C.offline_dataset(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size,
                                   data_dir=cfg.data_dir, checkpoints=cfg.replay_checkpoints)
        # One seeded order of the transitions; the runs on a fraction train on its first part.
        order = np.asarray(ds.valid)[np.random.default_rng(C.SUBSAMPLE_SEED).permutation(len(ds))]
        nets = {a: CURLNetwork(C.default_network(env_id, ds.num_actions, a)) for a in ("relu", "tanh")}
        td = C.DoubleDQN(gamma=cfg.gamma, clip_rewards=env_id.startswith("atari/"))
        train = C.TrainConfig(num_steps=cfg.num_steps, chunk_steps=cfg.chunk_steps, batch_size=cfg.batch_size,
                              optimizer=cfg.optimizer, target_update_period=cfg.target_update_period,
                              probe_size=cfg.probe_size, eval_every=cfg.eval_every,
                              checkpoint_seconds=cfg.checkpoint_seconds)
        evaluate = C.Evaluator(env_id, cfg.eval_episodes)
        with timings("evaluate"):
            rows += reference_rows(cfg, env_id, ds, nets["relu"])

        def train_group(members: list[C.Member], activation: str, sam: bool, study: str) -> list[dict]:
            # A program without any CURL member leaves the loss out rather than weighting it by 0.
            curl = any(m.settings["curl_weight"] > 0 for m in members)
            loss = TDWithCURL(td, shift_pad(env_id), C.image_axes(env_id)) if curl else td
            return C.train_offline(nets[activation], ds, loss, members, train, gradient=sam_gradient if sam else
                                   C.plain_gradient, order=order, evaluate=evaluate,
                                   columns={"study": study, "env": env_id, "agent": "dqn", "activation": activation},
                                   checkpoints=out / "checkpoints", timings=timings).rows

        for act in (fs[0].control, fs[0].treatment):
            for sam in (False, True):
                members = [member(cfg, fs, t, s, len(ds)) for t in design if levels(fs, t)["activation"] == act
                           and (levels(fs, t)["sam_rho"] > 0) == sam for s in range(cfg.seeds)]
                if members:
                    rows += train_group(members, act, sam, "design")
        if env_id in cfg.curl_sweep_env:
            control = np.zeros(len(fs), bool)
            members = [member(cfg, fs, control, s, len(ds), curl_weight=w)
                       for w in cfg.curl_sweep_weights for s in range(cfg.curl_sweep_seeds)]
            rows += train_group(members, fs[0].control, False, "curl_sweep")
    C.write_metrics(out, rows)
    return {"design_runs_per_env": int(len(design)), "design_generators": GENERATORS[cfg.design]}


def member(cfg: Config, fs: tuple[Factor, ...], treated: np.ndarray, seed: int, num_transitions: int,
           curl_weight: float | None = None) -> C.Member:
    """The trainer member of one run of the design: its settings are the factors' levels."""
    level = levels(fs, treated)
    if curl_weight is not None:  # the CURL sweep: the control setting with another weight
        level["curl_weight"] = curl_weight
    columns = {k: v for k, v in level.items() if k != "activation"}  # activation: the program's column
    return C.Member(seed=seed, learning_rate=level["lr"], columns=columns,
                    data_size=max(cfg.batch_size, int(round(level["fraction"] * num_transitions))),
                    target_update_period=level["target_period"],
                    settings={"sam_rho": level["sam_rho"], "curl_weight": level["curl_weight"]})


def reference_rows(cfg: Config, env_id: str, ds: C.Dataset, net: nn.Module) -> list[dict]:
    """The normalisation's two ends as metrics rows: a uniformly random policy and the data."""
    params = C.initial_params(net, ds.stacked_obs(ds.valid[:1]), [0])
    random_policy = C.Evaluator(env_id, cfg.reference_episodes, seed=C.REFERENCE_SEED, epsilon=1.0)
    row = {"study": "reference", "env": env_id, "seed": 0, "step": 0, "metric": "return"}
    return [dict(row, agent="random", value=float(random_policy(net, params)["return"].mean())),
            dict(row, agent="behaviour", value=float(episode_returns(ds).mean()))]


# ------------------------------------------------------------------------------------------------
# The interventions and the factorial design
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Factor:
    key: str  # the metrics.csv column of the setting
    title: str
    control: Any
    treatment: Any


def factors(cfg: Config) -> tuple[Factor, ...]:
    return (
        Factor("activation", "Activation function", "relu", "tanh"),
        Factor("lr", "Learning rate", cfg.learning_rate, cfg.treatment_learning_rate),
        Factor("target_period", "Target update steps", cfg.target_update_period, cfg.treatment_target_update_period),
        Factor("sam_rho", "SAM radius", 0.0, cfg.sam_rho),
        Factor("curl_weight", "CURL loss weight", 0.0, cfg.curl_weight),
        Factor("fraction", "Data split", 1.0, cfg.data_fraction),
    )


SHORT = {"activation": "act", "lr": "lr", "target_period": "target", "sam_rho": "sam", "curl_weight": "curl",
         "fraction": "data"}  # factor names in figures

# Generators of the fractions of a 2^6 design (Box, Hunter and Hunter, Table 6.14): each generated
# factor is the product of the listed base factors in +-1 coding. half: F = ABCDE (resolution VI);
# quarter: E = ABC, F = BCD (resolution IV).
GENERATORS = {"full": (), "half": ((0, 1, 2, 3, 4),), "quarter": ((0, 1, 2), (1, 2, 3))}


def fractional_factorial(num_factors: int, generators: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Two-level design, (runs, num_factors) of 0 (control) / 1 (treatment): a full factorial over
    the first num_factors - len(generators) factors; each further factor is the +-1 product of the
    base factors its generator lists."""
    base = num_factors - len(generators)
    full = np.asarray(list(itertools.product((0, 1), repeat=base)), np.int64)
    signs = 2 * full - 1
    extra = [np.prod(signs[:, list(g)], axis=1) for g in generators]
    return np.concatenate([full] + [((e + 1) // 2)[:, None] for e in extra], axis=1)


def interaction_aliases(design: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """For each pair of factors, the other pairs whose interaction column is the same (up to sign)
    in this design: their interactions cannot be told apart (empty lists for a full factorial)."""
    signs = 2 * design - 1
    pairs = list(itertools.combinations(range(design.shape[1]), 2))
    cols = {p: signs[:, p[0]] * signs[:, p[1]] for p in pairs}
    return {p: [q for q in pairs if q != p and abs(cols[p] @ cols[q]) == len(design)] for p in pairs}


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def levels(fs: tuple[Factor, ...], treated: np.ndarray) -> dict[str, Any]:
    """Each factor's value in a run of the design (its treatment where treated, else its control)."""
    return {f.key: f.treatment if t else f.control for f, t in zip(fs, treated)}


def treated_bits(fs: tuple[Factor, ...], row: dict[str, Any]) -> np.ndarray:
    """Which factors a run (its settings, as read from metrics.csv) has at their treatment."""
    bits = []
    for f in fs:
        if row.get(f.key) not in (f.control, f.treatment):
            raise ValueError(f"a run in metrics.csv has {f.key} = {row.get(f.key)!r}, not this config's "
                             f"{fmt(f.control)}/{fmt(f.treatment)}")
        bits.append(row[f.key] == f.treatment)
    return np.asarray(bits)


# ------------------------------------------------------------------------------------------------
# SAM and CURL: the two interventions that change how the trainer computes a step
# ------------------------------------------------------------------------------------------------


def sam_gradient(loss_of_params, params, settings):
    """Sharpness-aware gradient (Foret et al. 2021, their eq. 2 with p = 2), the trainer's gradient
    rule for the SAM runs: the gradient at ``params + rho * g / ||g||``, the steepest-ascent
    point at distance rho = ``settings["sam_rho"]``; the norm is global over all parameters, as in
    the paper. rho = 0 gives the plain gradient (at twice the cost)."""
    grad_fn = jax.value_and_grad(loss_of_params, has_aux=True)
    (value, aux), grads = grad_fn(params)
    scale = settings["sam_rho"] / (optax.global_norm(grads) + 1e-12)
    return (value, aux), grad_fn(jax.tree_util.tree_map(lambda p, g: p + scale * g, params, grads))[1]


class CURLNetwork(nn.Module):
    """A Q network with CURL's bilinear matrix W among its parameters (unused by its output, so the
    same network serves runs with and without CURL, which keeps them in one compiled program)."""

    base: nn.Module

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, features = self.base(obs)
        self.param("curl_bilinear", nn.initializers.lecun_normal(), (features.shape[-1], features.shape[-1]))
        return q, features


def curl_logits(anchors: jax.Array, keys: jax.Array, bilinear: jax.Array) -> jax.Array:
    """(batch, batch) similarities anchor_i W key_j; the matching pair of row i is column i."""
    return anchors @ bilinear @ keys.T


@dataclasses.dataclass(frozen=True)
class TDWithCURL:
    """The TD loss plus ``settings["curl_weight"]`` x CURL's InfoNCE loss over the minibatch (the
    other samples are the negatives). Anchors: the online network's penultimate features of the
    observations (the TD loss's own forward pass). Keys: the target network's features of a
    DrQ-shifted copy (``pad`` cells or pixels). Logits anchor W key^T with the learned bilinear W."""

    td: C.Loss
    pad: int
    axes: tuple[int, int]

    def __call__(self, apply, params, target_params, batch, settings, key):
        value, aux = self.td(apply, params, target_params, batch, settings, key)
        _, keys = apply(target_params, C.random_shift(key, batch.obs, self.pad, self.axes))
        logits = curl_logits(aux["features"], jax.lax.stop_gradient(keys), params["params"]["curl_bilinear"])
        curl = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(logits.shape[0])))
        return value + settings["curl_weight"] * curl, aux


def shift_pad(env_id: str) -> int:
    return 4 if env_id.startswith("atari/") else 1


def episode_returns(ds: C.Dataset) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------------
# Statistics: treatment effects, interactions and the permutation test (pure, tested directly)
# ------------------------------------------------------------------------------------------------


def average_treatment_effect(y: np.ndarray, treated: np.ndarray) -> tuple[float, float]:
    """(mean(y | treated) - mean(y | control), its standard error sqrt(s1^2/n1 + s0^2/n0)); runs
    with a non-finite y (diverged) are left out. NaN where a group is empty; the error is NaN
    where a group has fewer than 2 runs."""
    y, treated = np.asarray(y, np.float64), np.asarray(treated, bool)
    keep = np.isfinite(y)
    y1, y0 = y[keep & treated], y[keep & ~treated]
    if len(y1) == 0 or len(y0) == 0:
        return float("nan"), float("nan")
    se = math.sqrt(y1.var(ddof=1) / len(y1) + y0.var(ddof=1) / len(y0)) if min(len(y1), len(y0)) > 1 else float("nan")
    return float(y1.mean() - y0.mean()), float(se)


def interaction_effect(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two-factor interaction (effect of a with b treated) - (effect of a with b at control),
    i.e. y11 - y10 - y01 + y00 over cell means, with the standard error of that contrast (NaN
    where a cell is empty; the error is NaN where a cell has fewer than 2 runs)."""
    y, a, b = np.asarray(y, np.float64), np.asarray(a, bool), np.asarray(b, bool)
    keep = np.isfinite(y)
    cells = [y[keep & (a == i) & (b == j)] for i in (1, 0) for j in (1, 0)]
    if min(len(c) for c in cells) == 0:
        return float("nan"), float("nan")
    means = [c.mean() for c in cells]
    se = math.sqrt(sum(c.var(ddof=1) / len(c) for c in cells)) if min(len(c) for c in cells) > 1 else float("nan")
    return float(means[0] - means[1] - means[2] + means[3]), float(se)


def permutation_pvalue(y: np.ndarray, high: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """One-sided p-value of mean(y | high) - mean(y | not high) under random relabelling of which
    runs are "high" (their number kept). Exact (the share of all relabellings, the observed one
    included, whose difference is at least the observed) when there are at most ``permutations``
    relabellings; otherwise (1 + hits) / (1 + permutations) over random ones."""
    y, high = np.asarray(y, np.float64), np.asarray(high, bool)
    n, k = len(y), int(high.sum())
    if k == 0 or k == n:
        return float("nan")
    total = y.sum()

    def diff(sum_high):  # mean(high) - mean(rest) from the sum of the high group
        return sum_high / k - (total - sum_high) / (n - k)

    observed = diff(y[high].sum()) - 1e-9 * max(1.0, np.abs(y).sum())  # ties count as at least as large
    if math.comb(n, k) <= permutations:
        sums = np.asarray([y[list(c)].sum() for c in itertools.combinations(range(n), k)])
        return float(np.mean(diff(sums) >= observed))
    draws = np.argsort(rng.random((permutations, n)), axis=1)[:, :k]
    return float((1 + np.sum(diff(y[draws].sum(axis=1)) >= observed)) / (1 + permutations))


def rank_threshold_effect(srank: np.ndarray, ret: np.ndarray, q: float, permutations: int,
                          rng: np.random.Generator) -> dict:
    """Appendix A.10: the ATE on return of srank > its q-quantile (over these runs), its standard
    error and one-sided permutation p-value, and how many runs are above the threshold."""
    srank, ret = np.asarray(srank, np.float64), np.asarray(ret, np.float64)
    keep = np.isfinite(srank) & np.isfinite(ret)
    srank, ret = srank[keep], ret[keep]
    high = srank > np.quantile(srank, q) if len(srank) else np.zeros(0, bool)
    ate, se = average_treatment_effect(ret, high)
    return {"ate": ate, "se": se, "p": permutation_pvalue(ret, high, permutations, rng),
            "n_high": int(high.sum()), "n": int(len(srank))}


# Final values of every run, from metrics.csv
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Runs:
    """One entry per (environment, configuration, seed) of the design, final values."""

    env: np.ndarray  # (runs,) environment ids
    treated: np.ndarray  # (runs, factors) bool
    srank: np.ndarray
    ret: np.ndarray  # final evaluation return
    norm_ret: np.ndarray  # normalised: 0 random policy, 1 the data's behaviour

    def where(self, keep: np.ndarray) -> "Runs":
        return Runs(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))


def normaliser(m: C.Metrics, env: str) -> tuple[float, float]:
    """(random policy return, behaviour return) of an environment."""
    low = m.value[m.mask(env=env, agent="random", metric="return")][0]
    high = m.value[m.mask(env=env, agent="behaviour", metric="return")][0]
    if not high > low:
        print(f"warning: {env}: the data's episodes return {high:.3g}, a random policy {low:.3g}; the "
              "normalised return is undefined (NaN) there, and so are its Table 1 rows", file=sys.stderr)
    return low, high


def normalise(ret: np.ndarray, low: float, high: float) -> np.ndarray:
    """0 = the random policy, 1 = the data; NaN unless the data beat the random policy (a zero or
    negative scale would shrink or flip every effect on return)."""
    ret = np.asarray(ret, np.float64)
    return (ret - low) / (high - low) if high > low else np.full_like(ret, np.nan)


def configurations(m: C.Metrics, fs: tuple[Factor, ...], **where) -> list[dict[str, Any]]:
    """The distinct settings (one dict of factor values each) of the runs matching ``where``."""
    idx = m.mask(**where)
    keys = [f.key for f in fs]
    return [dict(zip(keys, values)) for values in dict.fromkeys(zip(*(m.data[k][idx].tolist() for k in keys)))]


def final_runs(m: C.Metrics, cfg: Config) -> Runs:
    fs = factors(cfg)
    cols: dict[str, list] = {k: [] for k in ("env", "treated", "srank", "ret", "norm_ret")}
    for env in m.values("env", study="design"):
        low, high = normaliser(m, env)
        for setting in configurations(m, fs, env=env, study="design"):
            srank = m.last(env=env, study="design", metric="srank", **setting)
            ret = m.last(env=env, study="design", metric="return", **setting)
            cols["env"] += [env] * len(srank)
            cols["treated"] += [treated_bits(fs, setting)] * len(srank)
            cols["srank"] += list(srank)
            cols["ret"] += list(ret)
            cols["norm_ret"] += list(normalise(ret, low, high))
    return Runs(*(np.asarray(cols[k]) for k in ("env", "treated", "srank", "ret", "norm_ret")))


# ------------------------------------------------------------------------------------------------
# Tables 3 and 1 (CSV and Markdown), written by analyse() from metrics.csv
# ------------------------------------------------------------------------------------------------


def effect_rows(runs: Runs, cfg: Config) -> list[dict]:
    """Table 3: the ATE of each intervention (and of the game, the paper's "level") on final srank,
    pooled over the design and the games, and per game."""
    fs, envs = factors(cfg), list(dict.fromkeys(runs.env))
    finite = np.isfinite(runs.srank)  # diverged runs are left out, and so not counted
    rows = []
    for i, f in enumerate(fs):
        ate, se = average_treatment_effect(runs.srank, runs.treated[:, i])
        row = {"intervention": f.title, "control": fmt(f.control), "treatment": fmt(f.treatment), "ate": ate, "se": se,
               "n_treated": int((finite & runs.treated[:, i]).sum()),
               "n_control": int((finite & ~runs.treated[:, i]).sum())}
        for env in envs:
            sub = runs.where(runs.env == env)
            row[f"ate_{env}"], row[f"se_{env}"] = average_treatment_effect(sub.srank, sub.treated[:, i])
        rows.append(row)
    if len(envs) == 2:
        level = runs.env == envs[1]
        ate, se = average_treatment_effect(runs.srank, level)
        rows.append({"intervention": "Level", "control": envs[0], "treatment": envs[1], "ate": ate, "se": se,
                     "n_treated": int((finite & level).sum()), "n_control": int((finite & ~level).sum())})
    return rows


def pair_rows(runs: Runs, cfg: Config) -> list[dict]:
    """Fig. 8: for each pair, the effect of treating both (vs neither) and their interaction."""
    fs = factors(cfg)
    aliases = interaction_aliases(fractional_factorial(len(fs), GENERATORS[cfg.design]))
    rows = []
    for i, j in itertools.combinations(range(len(fs)), 2):
        both, neither = runs.treated[:, i] & runs.treated[:, j], ~runs.treated[:, i] & ~runs.treated[:, j]
        sub = runs.where(both | neither)
        joint, joint_se = average_treatment_effect(sub.srank, sub.treated[:, i])
        inter, inter_se = interaction_effect(runs.srank, runs.treated[:, i], runs.treated[:, j])
        rows.append({"a": SHORT[fs[i].key], "b": SHORT[fs[j].key], "joint_ate": joint, "joint_se": joint_se,
                     "interaction": inter, "interaction_se": inter_se,
                     "aliased_with": " ".join(f"{SHORT[fs[p].key]}×{SHORT[fs[q].key]}" for p, q in aliases[(i, j)])})
    return rows


def threshold_rows(runs: Runs, cfg: Config) -> list[dict]:
    """Table 1: per game and activation group, the ATE on normalised return of srank above its
    q-quantile, for each q."""
    rng = np.random.default_rng(0)
    rows = []
    for env in dict.fromkeys(runs.env):
        for group, keep in (("Combined", np.ones(len(runs.env), bool)), ("ReLU", ~runs.treated[:, 0]),
                            ("Tanh", runs.treated[:, 0])):
            sub = runs.where((runs.env == env) & keep)
            for q in cfg.quantiles:
                rows.append({"env": env, "type": group, "quantile": q,
                             **rank_threshold_effect(sub.srank, sub.norm_ret, q, cfg.permutations, rng)})
    return rows


def write_table(out: Path, name: str, rows: list[dict], title: str) -> str:
    """Writes rows as ``name``.csv and ``name``.md; returns the Markdown."""
    import csv

    header = list(dict.fromkeys(k for r in rows for k in r))  # rows may lack columns (left blank)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r.get(h, "")) for h in header) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    return text



def analyse(m: C.Metrics, cfg: Config, out: Path) -> None:
    """Tables 3 and 1 and the Fig. 8 pair effects, as CSV and Markdown."""
    runs = final_runs(m, cfg)
    dropped = int((~np.isfinite(runs.srank)).sum())
    note = (f"{len(runs.env)} runs, final values; standard errors sqrt(s1^2/n1 + s0^2/n0); "
            f"design: {cfg.design} factorial" + (f"; {dropped} diverged runs left out" if dropped else ""))
    print(write_table(out, "table3_ate_srank", effect_rows(runs, cfg), f"Table 3: ATE on final srank ({note})"))
    write_table(out, "table3_pairs", pair_rows(runs, cfg), f"Fig. 8 data: pairs of interventions ({note})")
    print(write_table(out, "table1_rank_threshold", threshold_rows(runs, cfg),
                      "Table 1: ATE of srank > q-quantile on normalised return, one-sided permutation p-value"))


# ------------------------------------------------------------------------------------------------
# Claims
# ------------------------------------------------------------------------------------------------


def curl_sweep_finals(m: C.Metrics, env: str, metric: str) -> dict[float, float]:
    """Seed-mean final value of each CURL weight of the sweep."""
    return {w: float(np.nanmean(m.last(env=env, study="curl_sweep", curl_weight=w, metric=metric)))
            for w in m.values("curl_weight", env=env, study="curl_sweep")}


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    runs = final_runs(m, cfg)
    effects = effect_rows(runs, cfg)[: len(factors(cfg))]  # the six interventions, not the level
    largest = max(effects, key=lambda r: -np.inf if np.isnan(r["ate"]) else r["ate"])
    table1 = threshold_rows(runs, cfg)
    at_median = {(r["env"], r["type"]): r for r in table1 if r["quantile"] == 0.5}
    envs = list(dict.fromkeys(runs.env))
    # A test that could not be run (srank ties leave no run above the threshold: p is NaN) counts
    # against the claim, not as "not significant".
    relu, tanh = ({e: at_median[(e, t)] for e in envs} for t in ("ReLU", "Tanh"))
    held2 = all(relu[e]["ate"] > 0 and relu[e]["p"] < 0.05 and np.isfinite(tanh[e]["p"]) and tanh[e]["p"] >= 0.05
                for e in envs)
    pvalues = "; ".join(f"{C.short_env(r['env'])} {r['type']} q={r['quantile']:g}: ATE {r['ate']:.3f}, p {r['p']:.3f} "
                        f"({r['n_high']}/{r['n']} above)" for r in table1 if r["type"] != "Combined")
    sweep = []
    for env in m.values("env", study="curl_sweep"):
        rank, ret = curl_sweep_finals(m, env, "srank"), curl_sweep_finals(m, env, "return")
        none, large = min(rank), max(rank)
        sweep.append((env, large, rank[none], rank[large], ret[none], ret[large]))
    return [
        C.Claim("interventions.1", "Switching ReLU -> tanh has the largest positive effect on srank of the interventions",
                "ATE on final srank (pooled over the design and games), each intervention",
                "; ".join(f"{r['intervention']}: {r['ate']:.1f} +- {r['se']:.1f}" for r in effects),
                largest is effects[0] and effects[0]["ate"] > 0),
        C.Claim("interventions.2", "High srank has a significant positive effect on return for ReLU networks but not "
                "for tanh networks", "per game at q = 0.5: ReLU ATE > 0 with p < 0.05 and tanh p >= 0.05 "
                "(one-sided permutation test); all quantiles listed", pvalues, held2),
        C.Claim("interventions.3", "A large CURL weight raises srank without raising return",
                "CURL sweep, seed-mean final srank and return, the smallest weight (0) vs the largest",
                "; ".join(f"{C.short_env(e)} w={w:g}: srank {a:.1f} -> {b:.1f}, return {c:.2f} -> {d:.2f}"
                          for e, w, a, b, c, d in sweep) or "no CURL sweep was run",
                bool(sweep) and all(b > a and d <= c for _, _, a, b, c, d in sweep)),
    ]


# ------------------------------------------------------------------------------------------------
# Figures: one function per figure
# ------------------------------------------------------------------------------------------------

ACT_COLORS = {"relu": "tab:red", "tanh": "tab:blue"}


def scatter_with_correlations(ax, x: np.ndarray, y: np.ndarray, color, label: str) -> None:
    keep = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[keep], y[keep], s=14, alpha=0.7, color=color,
               label=f"{label}: Pearson {C.pearson(x, y):.2f}, Spearman {C.spearman(x, y):.2f} (n={keep.sum()})")


def evaluation_points(m: C.Metrics, env: str, settings: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(srank, return) at every evaluation after the start, of every seed of these configurations."""
    srank, ret = [], []
    for setting in settings:
        where = dict(env=env, study="design", **setting)
        steps, r = m.curves(metric="return", **where)
        for step, value in zip(steps[1:], r[:, 1:].T):
            srank += list(m.at_step(int(step), metric="srank", **where))
            ret += list(value)
    return np.asarray(srank), np.asarray(ret)


def plot_rank_vs_return_sweep(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 1: every evaluation point; a narrow setting (ReLU at the control learning rate and
    target period) against the whole sweep."""
    fs = factors(cfg)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for env in m.values("env", study="design"):
        low, high = normaliser(m, env)
        settings = configurations(m, fs, env=env, study="design")
        narrow = [s for s in settings if not treated_bits(fs, s)[[0, 1, 2]].any()]
        for ax, subset, name in ((axes[0, 0], narrow, "ReLU, control lr and target"), (axes[0, 1], settings, "all")):
            s, r = evaluation_points(m, env, subset)
            scatter_with_correlations(ax, s, normalise(r, low, high), None, f"{C.short_env(env)} ({name})")
    for ax, title in zip(axes[0], ("narrow setting", "whole sweep")):
        ax.set(xlabel="srank", ylabel="normalised return", title=title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle("Fig. 1: srank vs return at every evaluation after the start")
    C.save_figure(fig, out, "fig01_rank_vs_return_sweep")


def plot_rank_vs_return_activation(plt, runs: Runs, out: Path) -> None:
    """Fig. 7: final values per run, per activation and combined."""
    envs = list(dict.fromkeys(runs.env))
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        sub = runs.where(runs.env == env)
        for act, keep in (("relu", ~sub.treated[:, 0]), ("tanh", sub.treated[:, 0])):
            scatter_with_correlations(ax, sub.srank[keep], sub.norm_ret[keep], ACT_COLORS[act], act)
        ax.plot([], [], " ", label=f"combined: Pearson {C.pearson(sub.srank, sub.norm_ret):.2f}, "
                f"Spearman {C.spearman(sub.srank, sub.norm_ret):.2f}")
        ax.set(title=env, xlabel="final srank", ylabel="final normalised return")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle("Fig. 7: final srank vs return of every run of the design, per activation")
    C.save_figure(fig, out, "fig07_rank_vs_return_activation")


def plot_pairs(plt, runs: Runs, cfg: Config, out: Path) -> None:
    """Fig. 8: pairs. Joint effect (both vs neither) and interaction, pooled over games."""
    fs = factors(cfg)
    names = [SHORT[f.key] for f in fs]
    pairs, effects = pair_rows(runs, cfg), effect_rows(runs, cfg)
    k = len(fs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
    for ax, key, se_key, title in (
            (axes[0], "joint_ate", "joint_se", "ATE of changing both from control\n(diagonal: one)"),
            (axes[1], "interaction", "interaction_se", "interaction: effect of one with the other treated\n"
                                                       "minus with it at control")):
        grid, err = np.full((k, k), np.nan), np.full((k, k), np.nan)
        alias = np.full((k, k), "", dtype=object)
        for r in pairs:
            i, j = names.index(r["a"]), names.index(r["b"])
            grid[i, j] = grid[j, i] = r[key]
            err[i, j] = err[j, i] = r[se_key]
            if key == "interaction" and r["aliased_with"]:
                alias[i, j] = alias[j, i] = "\n= " + r["aliased_with"].replace(" ", "\n= ")
        if key == "joint_ate":
            for i in range(k):
                grid[i, i], err[i, i] = effects[i]["ate"], effects[i]["se"]
        bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
        for i, j in itertools.product(range(k), range(k)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}\n±{err[i, j]:.1f}{alias[i, j]}", ha="center", va="center",
                        fontsize=6 if alias[i, j] else 6.5, color="white" if abs(grid[i, j]) > 0.6 * bound else "black")
        ax.set_xticks(range(k), names, fontsize=7)
        ax.set_yticks(range(k), [f"{SHORT[f.key]}: {fmt(f.control)}→{fmt(f.treatment)}" for f in fs], fontsize=7)
        ax.set_title(title)
        ax.grid(False)
        fig.colorbar(image, ax=ax, shrink=0.8, label="Δ final srank")
    aliased = sum(bool(r["aliased_with"]) for r in pairs)
    fig.suptitle(f"Fig. 8: pairs of interventions on final srank ({len(runs.env)} runs, {cfg.design} factorial"
                 + (f"; {aliased} interactions cannot be told from the ones named under them" if aliased else "")
                 + ")")
    C.save_figure(fig, out, "fig08_ate_pairs")


def plot_curl_sweep(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 16: the CURL weight sweep."""
    envs = m.values("env", study="curl_sweep")
    fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 6), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        weights = sorted(m.values("curl_weight", env=env, study="curl_sweep"))
        for w, color in zip(weights, plt.cm.viridis(np.linspace(0, 0.9, len(weights)))):
            for i, metric in enumerate(("srank", "return")):
                C.plot_band(axes[i, j], *m.curves(env=env, study="curl_sweep", curl_weight=w, metric=metric),
                            f"CURL weight {w:g}" if i == 0 else None, color)
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return", xlabel="gradient steps")
        axes[0, j].legend()
    fig.suptitle(f"Fig. 16: CURL weight in the control setting ({C.seeds_note(m, env=envs[0], study='curl_sweep')})")
    C.save_figure(fig, out, "fig16_curl_weights")


def plot_sam(plt, m: C.Metrics, cfg: Config, out: Path) -> None:
    """Fig. 27: SAM against no SAM along training, per activation, over the runs of the design."""
    fs = factors(cfg)
    envs = m.values("env", study="design")
    fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 6), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        settings = configurations(m, fs, env=env, study="design")
        for act in (fs[0].control, fs[0].treatment):
            for rho in (0.0, fs[3].treatment):
                chosen = [s for s in settings if s["activation"] == act and s["sam_rho"] == rho]
                if not chosen:
                    continue
                for i, metric in enumerate(("srank", "return")):
                    steps = m.curves(env=env, study="design", metric=metric, **chosen[0])[0]
                    grid = np.concatenate([m.curves(env=env, study="design", metric=metric, **s)[1] for s in chosen])
                    C.plot_band(axes[i, j], steps, grid, f"{act}, SAM {fmt(rho)}" if i == 0 else None,
                                ACT_COLORS[act], ls="-" if rho else "--")
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return", xlabel="gradient steps")
        axes[0, j].legend()
    fig.suptitle("Fig. 27: with and without SAM, mean over the design's runs of each group (band = standard error)")
    C.save_figure(fig, out, "fig27_sam")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    runs = final_runs(m, cfg)
    plot_rank_vs_return_sweep(plt, m, cfg, out)
    plot_rank_vs_return_activation(plt, runs, out)
    plot_pairs(plt, runs, cfg, out)
    if m.has(study="curl_sweep"):
        plot_curl_sweep(plt, m, out)
    plot_sam(plt, m, cfg, out)


STUDY = C.Study("exp_interventions", __doc__.split("\n\n")[0], PRESETS, run, claims, plot, analyse)

if __name__ == "__main__":
    C.main(STUDY)

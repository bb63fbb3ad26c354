"""Interventions on rank and their average treatment effects (Sections 5 and 8.2, Appendices A.4, A.6
and A.10; Tables 1 and 3, Figures 1, 7, 8, 16 and 27 of Gulcehre et al. 2022).

    make exp_interventions                      # cpu preset: MinAtar space_invaders and breakout
    python exp_interventions.py --preset paper --data-dir /data/dqn_replay   # Atari Asterix, Gravitar
    python exp_interventions.py --plot-only     # redraw figures and tables from metrics.csv

Protocol. Offline double DQN is trained in a "control" setting (ReLU, a fixed learning rate, target
update period T, no SAM, no CURL, all of the data) and under six interventions, each switching one
setting to its "treatment": activation ReLU -> tanh, learning rate -> another, target period ->
a shorter one, SAM radius 0 -> 0.05 (Foret et al. 2021), CURL weight 0 -> 0.001 (Laskin et al.
2020) and data 100% -> 5%. The runs form a two-level factorial design over the six factors, crossed
with the environments (the paper's "level" factor). The paper preset runs the full factorial, 2^6
configurations x 2 games = 128 runs, the paper's count; the cpu preset runs a quarter fraction
(16 configurations per game, resolution IV: no main effect is confounded with a two-factor
interaction). Every configuration of one seed starts from the same initial weights, so
differences between configurations are not initialisation noise.

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

CURL here: the anchor is the online network's penultimate features of the observation (the same
forward pass the TD loss uses), the positive key the target network's features of a randomly
shifted copy (DrQ shift: 1 pixel on MinAtar's 10x10, 4 on Atari's 84x84); logits anchor W key^T
over the batch, with a learned bilinear W, and a cross-entropy towards the matching pair. CURL
keeps a momentum (EMA) copy of the encoder for the keys; the DQN target network is such a lagging
copy already, so it serves. SAM: the gradient at params + rho g/||g||, then Adam.
"""

from __future__ import annotations

import dataclasses
import functools
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(C.OfflineStudyConfig):
    learning_rate: float  # control
    treatment_learning_rate: float
    treatment_target_update_period: int  # the control's is target_update_period
    sam_rho: float  # SAM radius when SAM is the treatment
    curl_weight: float  # CURL weight when CURL is the treatment
    data_fraction: float  # fraction of the dataset when the data split is the treatment
    design: Literal["full", "half", "quarter"]  # which fraction of the 2^6 factorial to run
    curl_sweep_weights: tuple[float, ...]  # Fig. 16: CURL weights tried in the control setting
    curl_sweep_env: tuple[str, ...]  # environments of the CURL sweep (those also in env run it)
    curl_sweep_seeds: int
    quantiles: tuple[float, ...] = (0.25, 0.5, 0.75, 0.95)
    permutations: int = 20_000  # exact test up to this many relabellings, else this many random ones
    reference_episodes: int = 32  # episodes of the uniformly random policy (the normalisation's 0)
    subsample_seed: int = 0


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


@dataclasses.dataclass(frozen=True)
class Args(C.StudyArgs):
    """Offline double DQN under a factorial design of interventions: ATEs on srank and on return."""

    num_steps: int | None = None
    """Gradient steps per run."""
    design: Literal["full", "half", "quarter"] | None = None
    """Fraction of the 2^6 factorial of interventions to run (full: 64 configurations per environment)."""
    curl_sweep_weights: tuple[float, ...] | None = None
    """CURL weights of the Fig. 16 sweep (control setting otherwise)."""
    curl_sweep_env: tuple[str, ...] | None = None
    """Environments of the CURL sweep (it runs on those that are also in --env)."""
    permutations: int | None = None
    """Permutations of the one-sided test of Table 1 (exact when there are at most this many)."""
    dataset_size: int | None = None
    """Transitions collected for bsuite/MinAtar datasets."""
    data_dir: str | None = None
    """DQN Replay root for atari/ ids: DIR/<Game>/1/replay_logs/."""


# ------------------------------------------------------------------------------------------------
# The interventions and the factorial design
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Factor:
    key: str  # the key in a run's config label
    title: str
    control: Any
    treatment: Any


def factors(cfg: Config) -> tuple[Factor, ...]:
    return (
        Factor("act", "Activation function", "relu", "tanh"),
        Factor("lr", "Learning rate", cfg.learning_rate, cfg.treatment_learning_rate),
        Factor("target", "Target update steps", cfg.target_update_period, cfg.treatment_target_update_period),
        Factor("sam", "SAM radius", 0.0, cfg.sam_rho),
        Factor("curl", "CURL loss weight", 0.0, cfg.curl_weight),
        Factor("data", "Data split", 1.0, cfg.data_fraction),
    )


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


def run_levels(fs: tuple[Factor, ...], treated: np.ndarray) -> dict[str, Any]:
    """Each factor's value in a run of the design (its treatment where treated, else its control)."""
    return {f.key: f.treatment if t else f.control for f, t in zip(fs, treated)}


def run_label(levels: dict[str, Any]) -> str:
    """The config label of a run, e.g. ``act=relu lr=0.0003 target=1000 sam=0 curl=0 data=1``."""
    return " ".join(f"{k}={fmt(v)}" for k, v in levels.items())


def parse_label(label: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in label.split())


def treated_bits(fs: tuple[Factor, ...], label: str) -> np.ndarray:
    """Inverse of run_label: which factors a label has at their treatment."""
    values = parse_label(label)
    bits = []
    for f in fs:
        if values.get(f.key) not in (fmt(f.control), fmt(f.treatment)):
            raise ValueError(f"run {label!r} in metrics.csv does not match this preset's {f.key} levels "
                             f"{fmt(f.control)}/{fmt(f.treatment)}: re-plot with the --preset it was made with")
        bits.append(values[f.key] == fmt(f.treatment))
    return np.asarray(bits)


# ------------------------------------------------------------------------------------------------
# CURL: a bilinear contrastive loss between features of an observation and of a shifted copy
# ------------------------------------------------------------------------------------------------


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


@functools.lru_cache(maxsize=None)  # one loss object per network, so compiled chunks are reused
def curl_loss(net: nn.Module, pad: int, axes: tuple[int, int]):
    """The trainer's extra loss: InfoNCE over the batch with the other samples as negatives."""

    def loss(params, anchors, target_params, batch, key):
        _, keys = net.apply(target_params, C.random_shift(key, batch.obs, pad, axes))
        logits = curl_logits(anchors, jax.lax.stop_gradient(keys), params["params"]["curl_bilinear"])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(logits.shape[0])))

    return loss


def shift_pad(env_id: str) -> int:
    return 4 if env_id.startswith("atari/") else 1


# ------------------------------------------------------------------------------------------------
# Training: one vmapped program per (activation, SAM) group of the design, per environment
# ------------------------------------------------------------------------------------------------


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


def reference_rows(cfg: Config, env_id: str, ds: C.Dataset, net: nn.Module) -> list[dict]:
    """The normalisation's two ends as metrics rows: a uniformly random policy and the data."""
    params = C.initial_params(net, ds.stacked_obs(ds.valid[:1]), [0])
    random_return = C.evaluate_policies(net, params, env_id, cfg.reference_episodes, seed=20_000, epsilon=1.0).mean()
    data_return = episode_returns(ds).mean()
    row = {"env": env_id, "seed": 0, "step": 0, "metric": "return"}
    return [dict(row, agent="random", config="epsilon=1", value=float(random_return)),
            dict(row, agent="behaviour", config="dataset", value=float(data_return))]


def member(cfg: Config, fs: tuple[Factor, ...], treated: np.ndarray, seed: int, num_transitions: int,
           curl_weight: float | None = None) -> C.Member:
    level = run_levels(fs, treated)
    if curl_weight is not None:  # the CURL sweep: the control setting with another weight
        level["curl"] = curl_weight
    return C.Member(seed=seed, learning_rate=level["lr"], config=run_label(level),
                    data_size=max(cfg.batch_size, int(round(level["data"] * num_transitions))),
                    target_update_period=level["target"], sam_rho=level["sam"], extra_weight=level["curl"])


def run(cfg: Config, out: Path) -> dict:
    C.check_env_ids(cfg.env)
    fs = factors(cfg)
    design = fractional_factorial(len(fs), GENERATORS[cfg.design])
    rows = []
    for env_id in cfg.env:
        ds = cfg.dataset(env_id)
        # One seeded order of the transitions; the 5% runs train on its first 5%.
        order = np.asarray(ds.valid)[np.random.default_rng(cfg.subsample_seed).permutation(len(ds))]
        nets = {a: CURLNetwork(C.default_network(env_id, ds.num_actions, a)) for a in ("relu", "tanh")}
        rows += reference_rows(cfg, env_id, ds, nets["relu"])
        groups = [(a, sam) for a in (0, 1) for sam in (0, 1)]  # activation and SAM change the program
        for act, sam in groups:
            members = [member(cfg, fs, t, s, len(ds)) for t in design if t[0] == act and t[3] == sam
                       for s in range(cfg.seeds)]
            if members:
                rows += train(cfg, nets[fs[0].treatment if act else fs[0].control], ds, members, env_id, order, out,
                              agent="dqn", name=f"act{act}_sam{sam}")
        if env_id in cfg.curl_sweep_env:
            members = [member(cfg, fs, np.zeros(len(fs), bool), s, len(ds), curl_weight=w)
                       for w in cfg.curl_sweep_weights for s in range(cfg.curl_sweep_seeds)]
            rows += train(cfg, nets["relu"], ds, members, env_id, order, out, agent="dqn_curl_sweep", name="curl")
    C.write_metrics(out, rows)
    return {"design_runs_per_env": int(len(design)), "design_generators": GENERATORS[cfg.design]}


def train(cfg: Config, net: nn.Module, ds: C.Dataset, members: list[C.Member], env_id: str, order: np.ndarray,
          out: Path, *, agent: str, name: str) -> list[dict]:
    pad, axes = shift_pad(env_id), C.image_axes(env_id)
    # Without any CURL member the program leaves the loss out rather than weighting it by 0.
    extra = curl_loss(net, pad, axes) if any(m.extra_weight > 0 for m in members) else None
    result = C.train_offline(net, ds, cfg.train_config(), members, env_id=env_id, agent=agent, order=order,
                             evaluate_fn=cfg.evaluator(net, env_id), checkpoint_dir=out / "checkpoints",
                             extra_loss=extra, run_name=f"exp_interventions/{name}")
    return result.rows


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


# ------------------------------------------------------------------------------------------------
# Final values of every run, from metrics.csv
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Runs:
    """One entry per (environment, configuration, seed) of one agent, final values."""

    env: np.ndarray  # (runs,) environment ids
    config: np.ndarray  # (runs,) labels
    treated: np.ndarray  # (runs, factors) bool
    srank: np.ndarray
    ret: np.ndarray  # final evaluation return
    norm_ret: np.ndarray  # normalised: 0 random policy, 1 the data's behaviour

    def where(self, keep: np.ndarray) -> "Runs":
        return Runs(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))


def normaliser(m: C.Metrics, env: str) -> tuple[float, float]:
    """(random policy return, behaviour return) of an environment."""
    low = m.values("value", env=env, agent="random", metric="return")[0]
    high = m.values("value", env=env, agent="behaviour", metric="return")[0]
    if not high > low:
        print(f"warning: {env}: the data's episodes return {high:.3g}, a random policy {low:.3g}; the "
              "normalised return is undefined (NaN) there, and so are its Table 1 rows", file=sys.stderr)
    return low, high


def normalise(ret: np.ndarray, low: float, high: float) -> np.ndarray:
    """0 = the random policy, 1 = the data; NaN unless the data beat the random policy (a zero or
    negative scale would shrink or flip every effect on return)."""
    ret = np.asarray(ret, np.float64)
    return (ret - low) / (high - low) if high > low else np.full_like(ret, np.nan)


def final_runs(m: C.Metrics, cfg: Config, agent: str = "dqn") -> Runs:
    fs = factors(cfg)
    cols: dict[str, list] = {k: [] for k in ("env", "config", "treated", "srank", "ret", "norm_ret")}
    for env in m.values("env", agent=agent):
        low, high = normaliser(m, env)
        for config in m.values("config", env=env, agent=agent):
            srank = m.final(env=env, agent=agent, config=config, metric="srank")
            ret = m.final(env=env, agent=agent, config=config, metric="return")
            cols["env"] += [env] * len(srank)
            cols["config"] += [config] * len(srank)
            cols["treated"] += [treated_bits(fs, config)] * len(srank)
            cols["srank"] += list(srank)
            cols["ret"] += list(ret)
            cols["norm_ret"] += list(normalise(ret, low, high))
    return Runs(*(np.asarray(cols[k]) for k in ("env", "config", "treated", "srank", "ret", "norm_ret")))


# ------------------------------------------------------------------------------------------------
# Tables 3 and 1 (CSV and Markdown)
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
        rows.append({"a": fs[i].key, "b": fs[j].key, "joint_ate": joint, "joint_se": joint_se,
                     "interaction": inter, "interaction_se": inter_se,
                     "aliased_with": " ".join(f"{fs[p].key}×{fs[q].key}" for p, q in aliases[(i, j)])})
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


def write_tables(runs: Runs, cfg: Config, out: Path) -> None:
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
    agent = "dqn_curl_sweep"
    return {float(parse_label(c)["curl"]): float(np.nanmean(m.final(
        env=env, agent=agent, config=c, metric=metric))) for c in m.values("config", env=env, agent=agent)}


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    runs = final_runs(m, cfg)
    effects = effect_rows(runs, cfg)[: len(factors(cfg))]  # the six interventions, not the level
    largest = max(effects, key=lambda r: -np.inf if np.isnan(r["ate"]) else r["ate"])
    table1 = threshold_rows(runs, cfg)
    at_median = {(r["env"], r["type"]): r for r in table1 if r["quantile"] == 0.5}
    envs = list(dict.fromkeys(runs.env))
    short = lambda e: e.split("/")[-1]
    # A test that could not be run (srank ties leave no run above the threshold: p is NaN) counts
    # against the claim, not as "not significant".
    relu, tanh = ({e: at_median[(e, t)] for e in envs} for t in ("ReLU", "Tanh"))
    held2 = all(relu[e]["ate"] > 0 and relu[e]["p"] < 0.05 and np.isfinite(tanh[e]["p"]) and tanh[e]["p"] >= 0.05
                for e in envs)
    pvalues = "; ".join(f"{short(r['env'])} {r['type']} q={r['quantile']:g}: ATE {r['ate']:.3f}, p {r['p']:.3f} "
                        f"({r['n_high']}/{r['n']} above)" for r in table1 if r["type"] != "Combined")
    sweep = []
    for env in m.values("env", agent="dqn_curl_sweep"):
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
                "; ".join(f"{short(e)} w={w:g}: srank {a:.1f} -> {b:.1f}, return {c:.2f} -> {d:.2f}"
                          for e, w, a, b, c, d in sweep) or "no CURL sweep was run",
                bool(sweep) and all(b > a and d <= c for _, _, a, b, c, d in sweep)),
    ]


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def scatter_with_correlations(ax, x: np.ndarray, y: np.ndarray, color, label: str) -> None:
    keep = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[keep], y[keep], s=14, alpha=0.7, color=color,
               label=f"{label}: Pearson {C.pearson(x, y):.2f}, Spearman {C.spearman(x, y):.2f} (n={keep.sum()})")


def evaluation_points(m: C.Metrics, env: str, configs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(srank, return) at every evaluation after the start, of every seed of these configs."""
    srank, ret = [], []
    for c in configs:
        steps, r = m.curves(env=env, agent="dqn", config=c, metric="return")
        for step, value in zip(steps[1:], r[:, 1:].T):
            srank += list(m.at_step(int(step), env=env, agent="dqn", config=c, metric="srank"))
            ret += list(value)
    return np.asarray(srank), np.asarray(ret)


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    runs = final_runs(m, cfg)
    write_tables(runs, cfg, out)
    plt = C.plot_setup()
    fs, envs = factors(cfg), list(dict.fromkeys(runs.env))
    colors = {"relu": "tab:red", "tanh": "tab:blue"}

    # Fig. 1: every evaluation point; a narrow setting (ReLU at the control learning rate and
    # target period) against the whole sweep.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for env in envs:
        low, high = normaliser(m, env)
        configs = m.values("config", env=env, agent="dqn")
        narrow = [c for c in configs if not treated_bits(fs, c)[[0, 1, 2]].any()]
        for ax, subset, name in ((axes[0, 0], narrow, "ReLU, control lr and target"), (axes[0, 1], configs, "all")):
            s, r = evaluation_points(m, env, subset)
            scatter_with_correlations(ax, s, normalise(r, low, high), None, f"{env.split('/')[-1]} ({name})")
    for ax, title in zip(axes[0], ("narrow setting", "whole sweep")):
        ax.set(xlabel="srank", ylabel="normalised return", title=title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle("Fig. 1: srank vs return at every evaluation after the start")
    C.save_figure(fig, out, "fig01_rank_vs_return_sweep")

    # Fig. 7: final values per run, per activation and combined.
    fig, axes = plt.subplots(1, len(envs), figsize=(5.2 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        sub = runs.where(runs.env == env)
        for act, keep in (("relu", ~sub.treated[:, 0]), ("tanh", sub.treated[:, 0])):
            scatter_with_correlations(ax, sub.srank[keep], sub.norm_ret[keep], colors[act], act)
        ax.plot([], [], " ", label=f"combined: Pearson {C.pearson(sub.srank, sub.norm_ret):.2f}, "
                f"Spearman {C.spearman(sub.srank, sub.norm_ret):.2f}")
        ax.set(title=env, xlabel="final srank", ylabel="final normalised return")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.suptitle("Fig. 7: final srank vs return of every run of the design, per activation")
    C.save_figure(fig, out, "fig07_rank_vs_return_activation")

    # Fig. 8: pairs. Joint effect (both vs neither) and interaction, pooled over games.
    pairs = pair_rows(runs, cfg)
    effects = effect_rows(runs, cfg)
    k = len(fs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")
    for ax, key, se_key, title in (
            (axes[0], "joint_ate", "joint_se", "ATE of changing both from control\n(diagonal: one)"),
            (axes[1], "interaction", "interaction_se", "interaction: effect of one with the other treated\n"
                                                       "minus with it at control")):
        grid, err = np.full((k, k), np.nan), np.full((k, k), np.nan)
        alias = np.full((k, k), "", dtype=object)
        for r in pairs:
            i, j = [f.key for f in fs].index(r["a"]), [f.key for f in fs].index(r["b"])
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
        ax.set_xticks(range(k), [f.key for f in fs], fontsize=7)
        ax.set_yticks(range(k), [f"{f.key}: {fmt(f.control)}→{fmt(f.treatment)}" for f in fs], fontsize=7)
        ax.set_title(title)
        ax.grid(False)
        fig.colorbar(image, ax=ax, shrink=0.8, label="Δ final srank")
    aliased = sum(bool(r["aliased_with"]) for r in pairs)
    fig.suptitle(f"Fig. 8: pairs of interventions on final srank ({len(runs.env)} runs, {cfg.design} factorial"
                 + (f"; {aliased} interactions cannot be told from the ones named under them" if aliased else "")
                 + ")")
    C.save_figure(fig, out, "fig08_ate_pairs")

    # Fig. 16: the CURL weight sweep.
    sweep_envs = m.values("env", agent="dqn_curl_sweep")
    if sweep_envs:
        fig, axes = plt.subplots(2, len(sweep_envs), figsize=(5 * len(sweep_envs), 6), squeeze=False, sharex="col")
        for j, env in enumerate(sweep_envs):
            configs = sorted(m.values("config", env=env, agent="dqn_curl_sweep"),
                             key=lambda c: float(parse_label(c)["curl"]))
            shades = plt.cm.viridis(np.linspace(0, 0.9, len(configs)))
            for c, color in zip(configs, shades):
                weight = parse_label(c)["curl"]
                for i, metric in enumerate(("srank", "return")):
                    C.plot_band(axes[i, j], *m.curves(env=env, agent="dqn_curl_sweep", config=c, metric=metric),
                                f"CURL weight {weight}" if i == 0 else None, color)
            axes[0, j].set(title=env, ylabel="srank")
            axes[1, j].set(ylabel="evaluation return", xlabel="gradient steps")
            axes[0, j].legend()
        fig.suptitle(f"Fig. 16: CURL weight in the control setting "
                     f"({C.seeds_note(m, env=sweep_envs[0], agent='dqn_curl_sweep')})")
        C.save_figure(fig, out, "fig16_curl_weights")

    # Fig. 27: SAM against no SAM along training, per activation, over the runs of the design.
    fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 6), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        configs = m.values("config", env=env, agent="dqn")
        for act in (0, 1):
            for sam in (0, 1):
                chosen = [c for c in configs if treated_bits(fs, c)[0] == act and treated_bits(fs, c)[3] == sam]
                if not chosen:
                    continue
                label = f"{fs[0].treatment if act else fs[0].control}, SAM {fmt(fs[3].treatment if sam else 0.0)}"
                for i, metric in enumerate(("srank", "return")):
                    steps = m.curves(env=env, agent="dqn", config=chosen[0], metric=metric)[0]
                    grid = np.concatenate([m.curves(env=env, agent="dqn", config=c, metric=metric)[1] for c in chosen])
                    C.plot_band(axes[i, j], steps, grid, label if i == 0 else None,
                                colors[fs[0].treatment if act else fs[0].control], ls="-" if sam else "--")
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return", xlabel="gradient steps")
        axes[0, j].legend()
    fig.suptitle("Fig. 27: with and without SAM, mean over the design's runs of each group (band = standard error)")
    C.save_figure(fig, out, "fig27_sam")


def main(args: Args) -> None:
    C.run_study(args, PRESETS, run=run, claims=claims, plot=plot)


if __name__ == "__main__":
    C.cli(Args, main)

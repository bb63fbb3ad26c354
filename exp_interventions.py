"""Interventions on rank and their average treatment effects (Sections 5 and 8.2, Appendices A.4, A.6
and A.10; Tables 1 and 3, Figures 1, 7, 8, 16 and 27 of Gulcehre et al. 2022).

Tables 1 and 3; figures 1 (srank against return, a narrow setting against the whole sweep), 7
(final srank against return per activation), 8 (effects of pairs of interventions), 16 (CURL weight
sweep), 27 (with and without SAM, a controlled pair), and the memory-task stand-ins for DeepMind
Lab: 26 (srank against return of the LSTM agent with CURL and with SAM), 28 (SAM) and 30 (CURL).

    make exp_interventions                      # cpu preset: MinAtar space_invaders and breakout; bsuite memory_len
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

CURL as Laskin et al. (2020) define it: two random shifts of each observation (anchor and positive),
the anchor encoded by the online network's encoder and a learned projection, the positive by a
momentum (exponential moving average) copy of them, a learned bilinear similarity, InfoNCE over the
minibatch. The DeepMind Lab stand-in (bsuite/memory_len) encodes the LSTM's outputs averaged over
time, as the paper does, and augments its vector observations with Gaussian noise.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys
from pathlib import Path
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import common as C

SubStudy = Literal["design", "curl_sweep", "sam_pair", "memory"]


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
    sam_pair_seeds: int = 5
    """Seeds of the controlled SAM pair (Fig. 27): the control setting with and without SAM."""
    memory_env: str = "bsuite/memory_len"
    """The memory task standing in for DeepMind Lab (Figs. 26, 28, 30)."""
    memory_steps: int = 10_000
    """Gradient steps per run of the memory-task study."""
    memory_eval_every: int = 0
    """Gradient steps between the memory task's evaluations; 0: --eval-every's (what every run before
    this setting did). The ``paper`` preset sets its own: its --eval-every, the Atari runs' 1e6, is
    longer than a memory-task run."""
    memory_seeds: int = 5
    """Seeds per variant of the memory-task study."""
    memory_dataset_size: int = 50_000
    """Transitions in the memory task's dataset (the bsuite studies' 50k at every preset: the game
    datasets' size, 1e6 at ``long`` and DQN Replay at ``paper``, is not the memory task's)."""
    memory_learning_rate: float = 1e-3
    """Adam learning rate of the memory-task study (the paper's DeepMind Lab rate)."""
    memory_curl_weights: tuple[float, ...] = (0.0, 1e-3, 0.1, 1.0)
    """CURL weights of the memory-task study (the SAM variant has weight 0)."""
    studies: tuple[SubStudy, ...] = ("design", "curl_sweep", "sam_pair", "memory")
    """What to run: the factorial design, the CURL sweep, the SAM pair, the memory-task study."""
    curl_latent_dim: int = 50
    """CURL's latent size (Laskin et al.'s encoder feature dimension)."""
    curl_tau: float = 0.05
    """CURL's momentum encoder: key <- (1 - tau) key + tau online, every step (Laskin et al.'s 0.05)."""
    memory_noise: float = 0.1
    """Standard deviation of the Gaussian noise that augments the memory task's vector observations."""
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
        C.check_env_ids((*self.env, *self.curl_sweep_env, self.memory_env))
        C.require(self.memory_env == "bsuite/memory_len", "--memory-env must be bsuite/memory_len")
        C.require_positive(self, "sam_pair_seeds", "memory_steps", "memory_seeds", "memory_dataset_size",
                           "memory_learning_rate", "curl_latent_dim", "curl_tau", "memory_noise")
        C.require(self.memory_eval_every >= 0, "--memory-eval-every must be >= 0 (0: --eval-every's)")
        if "memory" in self.studies:
            period = self.memory_eval_period
            C.require(self.memory_steps % period == 0 and period % self.chunk_steps == 0,
                      f"--memory-steps ({self.memory_steps}) must be a multiple of the memory task's evaluation "
                      f"period ({period}: --memory-eval-every, or --eval-every's if 0), and that of --chunk-steps "
                      f"({self.chunk_steps})")
        C.require_positive(self, "seeds", "num_steps", "chunk_steps", "eval_every", "eval_episodes", "batch_size",
                           "learning_rate", "treatment_learning_rate", "target_update_period",
                           "treatment_target_update_period", "sam_rho", "curl_weight", "curl_sweep_seeds",
                           "permutations", "reference_episodes", "probe_size")
        C.require_fraction(self, "data_fraction", "quantiles")
        C.require(all(w >= 0 for w in self.curl_sweep_weights), "--curl-sweep-weights must be >= 0")
        C.check_dataset(self.env, self.dataset_noise, self.dataset_size)
        C.require_multiple(self, "num_steps", "chunk_steps")
        C.require_multiple(self, "eval_every", "chunk_steps")

    @property
    def memory_eval_period(self) -> int:
        return self.memory_eval_every or self.eval_every


PRESETS = {
    # MinAtar, datasets of 50k transitions made locally. space_invaders (dense rewards) stands in
    # for Asterix, breakout (sparser) for Gravitar: on MinAtar asterix the collecting DQN does not
    # learn within 50k transitions (its data score 0.56 per episode, a random policy 0.53), which
    # would leave no returns to compare. Measured at ad50d1b, before ffc00f4 made the update 1.13-1.3x
    # faster, on 2 CPU cores with 16 members vmapped: 570
    # member-steps/s plain, 450 with CURL, 370 with SAM, 270 with both; 2 games x 16 configurations
    # x 1e4 steps, the CURL sweep (4 weights x 5 seeds per game: the fewest with which the
    # sign-flip test can reach p < 0.05; 2 seeds took 1366 s in all at 1af80f9), the SAM pair and the
    # memory-task study: the README's run-times table has the time. Scaled down from
    # the paper: the target periods 2500 -> 200 become 1000 -> 100 (a 1e4-step run would see 4
    # target updates at 2500); the learning rates are the bsuite default and 10x it.
    "cpu": Config(env=("minatar/space_invaders", "minatar/breakout"), seeds=1, num_steps=10_000, chunk_steps=500,
                  eval_every=2_500, eval_episodes=8, batch_size=32, learning_rate=3e-4, treatment_learning_rate=3e-3,
                  target_update_period=1_000, treatment_target_update_period=100, sam_rho=0.05, curl_weight=1e-3,
                  data_fraction=0.05, design="quarter", curl_sweep_weights=(0.0, 1e-3, 0.1, 1.0),
                  curl_sweep_env=("minatar/space_invaders", "minatar/breakout"), curl_sweep_seeds=5,
                  dataset_noise=0.1, dataset_size=50_000),
    # 1e5 gradient steps (10x cpu) and 2 seeds of the whole design, MinAtar datasets of 1e6
    # transitions: for a GPU (the 64 design runs, 32 per seed, are hours on a 2-core CPU). The memory-task
    # study alone (--studies memory, bsuite), `make exp_interventions-long`, took 57.6 min in one run
    # on a 2-core AMD EPYC with AVX-512 at f4c395e, about 73 on one with AVX2 (stopped after its CURL
    # program and resumed) and 58 on an Intel CPU.
    "long": Config(env=("minatar/space_invaders", "minatar/breakout"), seeds=2, num_steps=100_000, chunk_steps=5_000,
                   eval_every=10_000, eval_episodes=10, batch_size=32, learning_rate=3e-4,
                   treatment_learning_rate=3e-3, target_update_period=2_500, treatment_target_update_period=200,
                   sam_rho=0.05, curl_weight=1e-3, data_fraction=0.05, design="quarter",
                   curl_sweep_weights=(0.0, 1e-3, 0.1, 1.0), curl_sweep_env=("minatar/space_invaders", "minatar/breakout"),
                   curl_sweep_seeds=5, dataset_noise=0.1, dataset_size=1_000_000, memory_steps=100_000),
    # The paper's DQN-interventions: 2e7 steps at batch 256, Atari Asterix and Gravitar, the full
    # factorial (128 runs), control learning rate 3e-5 (Appendix A.12). The memory task stands in
    # for DeepMind Lab, whose runs are 2e4 steps there; it trains for 1e5 (as activation's LSTM study),
    # evaluated every 1e4 steps rather than at the Atari period of 1e6. The paper gives no seed count
    # for the CURL sweep (Fig. 16); 5 is the fewest with which its sign-flip test can reach p < 0.05.
    "paper": Config(env=("atari/Asterix", "atari/Gravitar"), seeds=1, num_steps=20_000_000, chunk_steps=10_000,
                    eval_every=1_000_000, eval_episodes=10, batch_size=256, learning_rate=3e-5,
                    treatment_learning_rate=3e-4, target_update_period=2_500, treatment_target_update_period=200,
                    sam_rho=0.05, curl_weight=1e-3, data_fraction=0.05, design="full",
                    curl_sweep_weights=(0.0, 1e-3, 0.1, 1.0), curl_sweep_env=("atari/Asterix", "atari/Gravitar"),
                    curl_sweep_seeds=5, dataset_noise=0.0, dataset_size=0, replay_checkpoints=(0, 1, 2, 3),
                    memory_steps=100_000, memory_eval_every=10_000),
    "smoke": Config(env=("bsuite/catch",), seeds=1, num_steps=400, chunk_steps=200, eval_every=200, eval_episodes=2,
                    batch_size=32, learning_rate=3e-4, treatment_learning_rate=3e-3, target_update_period=100,
                    treatment_target_update_period=20, sam_rho=0.05, curl_weight=1e-3, data_fraction=0.05,
                    design="quarter", curl_sweep_weights=(0.0, 1.0), curl_sweep_env=("bsuite/catch",),
                    curl_sweep_seeds=2, dataset_noise=0.1, dataset_size=2_000, permutations=2_000,
                    reference_episodes=8, sam_pair_seeds=2, memory_steps=200, memory_seeds=2,
                    memory_dataset_size=2_000, memory_curl_weights=(0.0, 1.0)),
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
    environment also: the random policy's and the data's returns (the normalisation), a sweep over
    the CURL weight in the control setting (Fig. 16), and the control setting with and without SAM
    (Fig. 27). Last, the LSTM agent on the memory task with CURL weights and with SAM."""
    fs = factors(cfg)
    design = fractional_factorial(len(fs), GENERATORS[cfg.design])
    control = np.zeros(len(fs), bool)
    rows = []
    # The game sub-studies share each game's dataset and normalisation; the memory study needs neither.
    for env_id in cfg.env if set(cfg.studies) - {"memory"} else ():
        with timings("collect"):
            ds = C.offline_dataset(env_id, noise=cfg.dataset_noise, num_transitions=cfg.dataset_size,
                                   data_dir=cfg.data_dir, checkpoints=cfg.replay_checkpoints)
        # One seeded order of the transitions; the runs on a fraction train on its first part.
        order = np.asarray(ds.valid)[np.random.default_rng(C.SUBSAMPLE_SEED).permutation(len(ds))]
        with timings("evaluate"):
            rows += reference_rows(cfg, env_id, ds, curl_network(cfg, env_id, ds.num_actions, "relu"))
        train = C.TrainConfig(num_steps=cfg.num_steps, chunk_steps=cfg.chunk_steps, batch_size=cfg.batch_size,
                              optimizer=cfg.optimizer, target_update_period=cfg.target_update_period,
                              probe_size=cfg.probe_size, eval_every=cfg.eval_every,
                              checkpoint_seconds=cfg.checkpoint_seconds)

        def train_group(members: list[C.Member], activation: str, sam: bool, study: str) -> list[dict]:
            return train_program(cfg, out, timings, env_id, ds, members, train, activation, sam, study, order)

        if "design" in cfg.studies:
            for act in (fs[0].control, fs[0].treatment):
                for sam in (False, True):
                    members = [member(cfg, fs, t, s, len(ds)) for t in design if levels(fs, t)["activation"] == act
                               and (levels(fs, t)["sam_rho"] > 0) == sam for s in range(cfg.seeds)]
                    if members:
                        rows += train_group(members, act, sam, "design")
        if "curl_sweep" in cfg.studies and env_id in cfg.curl_sweep_env:
            members = [member(cfg, fs, control, s, len(ds), curl_weight=w)
                       for w in cfg.curl_sweep_weights for s in range(cfg.curl_sweep_seeds)]
            rows += train_group(members, fs[0].control, False, "curl_sweep")
        if "sam_pair" in cfg.studies:
            for sam in (False, True):
                treated = control.copy()
                treated[3] = sam  # the SAM factor only
                rows += train_group([member(cfg, fs, treated, s, len(ds)) for s in range(cfg.sam_pair_seeds)],
                                    fs[0].control, sam, "sam_pair")
    if "memory" in cfg.studies:
        rows += run_memory(cfg, out, timings)
    C.write_metrics(out, rows)
    return {"design_runs_per_env": int(len(design)), "design_generators": GENERATORS[cfg.design]}


def train_program(cfg: Config, out: Path, timings: C.Timings, env_id: str, ds: C.Dataset, members: list[C.Member],
                  train: C.TrainConfig, activation: str, sam: bool, study: str, order: np.ndarray | None = None,
                  history: int = 1) -> list[dict]:
    """One compiled program: the double-DQN loss, plus CURL's if any member has a CURL weight (a
    program without one leaves it out rather than weighting it by 0), with SAM's gradient rule or
    the plain one."""
    td = C.DoubleDQN(gamma=cfg.gamma, clip_rewards=env_id.startswith("atari/"))
    curl = any(m.settings["curl_weight"] > 0 for m in members)
    loss = TDWithCURL(td, augmentation(cfg, env_id), cfg.curl_tau) if curl else td
    net = curl_network(cfg, env_id, ds.num_actions, activation)
    return C.train_offline(net, ds, loss, members, train, gradient=sam_gradient if sam else C.plain_gradient,
                           order=order, evaluate=C.Evaluator(env_id, cfg.eval_episodes, history=history),
                           columns={"study": study, "env": env_id, "agent": "dqn", "activation": activation},
                           checkpoints=out / "checkpoints", timings=timings).rows


def run_memory(cfg: Config, out: Path, timings: C.Timings) -> list[dict]:
    """The DeepMind Lab stand-in: the LSTM agent (tanh cell, as R2D2's) on the memory task, with
    each CURL weight and, separately, with SAM. Its target period is the design's control period:
    2,500 at ``long`` is R2D2's (Kapturowski et al. 2019), the paper's DeepMind Lab agent."""
    history = C.MEMORY_LENGTH + 1
    with timings("collect"):
        ds = C.offline_dataset(cfg.memory_env, noise=cfg.dataset_noise, num_transitions=cfg.memory_dataset_size,
                               history=history)
    train = C.TrainConfig(num_steps=cfg.memory_steps, chunk_steps=cfg.chunk_steps, batch_size=cfg.batch_size,
                          optimizer=cfg.optimizer, target_update_period=cfg.target_update_period,
                          probe_size=cfg.probe_size, eval_every=cfg.memory_eval_period,
                          checkpoint_seconds=cfg.checkpoint_seconds)
    settings = lambda w, rho, seed: C.Member(seed=seed, learning_rate=cfg.memory_learning_rate,
                                             columns={"curl_weight": w, "sam_rho": rho},
                                             settings={"curl_weight": w, "sam_rho": rho})
    rows = train_program(cfg, out, timings, cfg.memory_env, ds, [settings(w, 0.0, s) for w in cfg.memory_curl_weights
                                                                  for s in range(cfg.memory_seeds)],
                         train, "tanh", False, "memory", history=history)
    rows += train_program(cfg, out, timings, cfg.memory_env, ds, [settings(0.0, cfg.sam_rho, s)
                                                                  for s in range(cfg.memory_seeds)],
                          train, "tanh", True, "memory", history=history)
    return rows


def curl_network(cfg: Config, env_id: str, num_actions: int, activation: str) -> nn.Module:
    """The study's network: the paper's for the environment (the LSTM agent on the memory task)
    with CURL's head beside it."""
    if env_id == cfg.memory_env:
        base = C.RecurrentQNetwork(num_actions, 64, cell_activation=activation)
    else:
        base = C.default_network(env_id, num_actions, activation)
    return CURLNetwork(base, cfg.curl_latent_dim)


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
            dict(row, agent="behaviour", value=float(C.episode_returns(ds).mean()))]


def parts(cfg: Config) -> list[C.Part]:
    """The sub-studies ``cfg`` runs, for the README's presets table."""
    runs = len(fractional_factorial(6, GENERATORS[cfg.design]))
    every = {"design": C.Part("design", cfg.env, cfg.seeds, cfg.num_steps, f"{runs} configurations ({cfg.design})"),
             "curl_sweep": C.Part("curl_sweep", tuple(e for e in cfg.curl_sweep_env if e in cfg.env),
                                  cfg.curl_sweep_seeds, cfg.num_steps, f"{len(cfg.curl_sweep_weights)} CURL weights"),
             "sam_pair": C.Part("sam_pair", cfg.env, cfg.sam_pair_seeds, cfg.num_steps, "with and without SAM"),
             "memory": C.Part("memory", (cfg.memory_env,), cfg.memory_seeds, cfg.memory_steps,
                              f"{len(cfg.memory_curl_weights)} CURL weights and SAM")}
    return [every[s] for s in cfg.studies]

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
    """A Q network with CURL's head beside it (Laskin et al. 2020): the network's encoder output
    (its torso: the convolutions; the LSTM's outputs averaged over time) -> a linear projection to
    ``latent_dim`` -> LayerNorm -> tanh (their encoder's last layers), and the bilinear matrix W of
    the similarity. The head does not feed the Q values, so runs with and without CURL share the
    network and one compiled program; the probe measures the Q network's penultimate layer."""

    base: nn.Module
    latent_dim: int = 50

    def setup(self):
        self.projection = nn.Dense(self.latent_dim)
        self.norm = nn.LayerNorm()
        self.bilinear = self.param("curl_bilinear", nn.initializers.uniform(1.0), (self.latent_dim, self.latent_dim))

    def latent(self, obs: jax.Array) -> jax.Array:
        return jnp.tanh(self.norm(self.projection(self.base.encode(obs))))

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.is_initializing():
            self.latent(obs)  # create the head's parameters
        return self.base(obs)


def curl_logits(anchors: jax.Array, positives: jax.Array, bilinear: jax.Array) -> jax.Array:
    """(batch, batch) similarities anchor_i W positive_j, each row shifted by its maximum (as Laskin
    et al. do, for stability); the matching pair of row i is column i."""
    logits = anchors @ bilinear @ positives.T
    return logits - jnp.max(logits, axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class RandomShift:
    """CURL's augmentation for images: DrQ's random shift by up to ``pad`` cells or pixels."""

    pad: int
    axes: tuple[int, int]

    def __call__(self, key: jax.Array, obs: jax.Array) -> jax.Array:
        return C.random_shift(key, obs, self.pad, self.axes)


@dataclasses.dataclass(frozen=True)
class GaussianNoise:
    """CURL's augmentation for vector observations (the memory task): additive N(0, scale^2)."""

    scale: float

    def __call__(self, key: jax.Array, obs: jax.Array) -> jax.Array:
        return obs + self.scale * jax.random.normal(key, obs.shape)


def augmentation(cfg: Config, env_id: str):
    if env_id == cfg.memory_env:
        return GaussianNoise(cfg.memory_noise)
    return RandomShift(shift_pad(env_id), C.image_axes(env_id))


@dataclasses.dataclass(frozen=True)
class TDWithCURL:
    """The TD loss plus ``settings["curl_weight"]`` x CURL's InfoNCE loss over the minibatch (the
    other samples are the negatives). Each observation is augmented twice; the anchor view goes
    through the online encoder and head, the positive view through their momentum copy (the
    loss's state: an exponential moving average of the online parameters, rate ``tau`` per step;
    no gradient). The anchor's gradient trains the encoder, the head and W."""

    td: C.Loss
    augment: Callable[[jax.Array, jax.Array], jax.Array]
    tau: float

    def init_state(self, params):
        return params  # the momentum encoder starts as a copy

    def __call__(self, apply, params, target_params, batch, settings, key, loss_state=()):
        value, aux = self.td(apply, params, target_params, batch, settings, key)
        anchor_key, positive_key = jax.random.split(key)
        anchors = apply(params, self.augment(anchor_key, batch.obs), method="latent")
        positives = jax.lax.stop_gradient(apply(loss_state, self.augment(positive_key, batch.obs), method="latent"))
        logits = curl_logits(anchors, positives, params["params"]["curl_bilinear"])
        curl = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(logits.shape[0])))
        momentum = jax.tree_util.tree_map(lambda k, p: (1 - self.tau) * k + self.tau * jax.lax.stop_gradient(p),
                                          loss_state, params)
        return value + settings["curl_weight"] * curl, aux | {"loss_state": momentum}


def shift_pad(env_id: str) -> int:
    return 4 if env_id.startswith("atari/") else 1


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
        warn_undefined_scale(env, float(low), float(high))
    return low, high


@functools.lru_cache(maxsize=None)  # once per environment, not once per table, claim and figure
def warn_undefined_scale(env: str, low: float, high: float) -> None:
    print(f"warning: {env}: the data's episodes return {high:.3g}, a random policy {low:.3g}; the "
          "normalised return is undefined (NaN) there, and so are its Table 1 rows", file=sys.stderr)


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
    if not m.has(study="design"):
        return
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


def design_runs(runs: Runs, env: str) -> Runs:
    return runs.where(runs.env == env)


def claim_activation_largest(runs: Runs, cfg: Config) -> C.Claim:
    from scipy import stats

    fs = factors(cfg)
    evidence = []
    for env in dict.fromkeys(runs.env):
        effects = [average_treatment_effect(design_runs(runs, env).srank, design_runs(runs, env).treated[:, i])
                   for i in range(len(fs))]
        (ate, se), others = effects[0], effects[1:]
        if not np.isfinite(se) or se == 0:
            evidence.append(C.Evidence(env, "not testable here", note="too few runs for a standard error"))
            continue
        # z-tests: the activation's effect is > 0, and larger than every other intervention's effect in size
        # (Table 3 ranks the effects by magnitude: the learning rate's is large and negative).
        z = [ate / se] + [(ate - abs(a)) / np.hypot(se, b) for a, b in others]
        if not np.all(np.isfinite(z)):  # an intervention with no effect estimate cannot be out-ranked
            evidence.append(C.Evidence(env, "not testable here", note="another intervention's effect is undefined"))
            continue
        p_claim = max(stats.norm.sf(v) for v in z)  # the weakest of the comparisons
        p_other = min(stats.norm.cdf(v) for v in z)
        verdict = "held" if p_claim < C.ALPHA else "not held" if p_other < C.ALPHA else "inconclusive"
        note = ", ".join(f"{SHORT[f.key]} {a:.1f}" for f, (a, _) in zip(fs[1:], others))
        evidence.append(C.Evidence(env, verdict, ate, ate - 1.96 * se, ate + 1.96 * se, p_claim,
                                   len(design_runs(runs, env).env), f"the others: {note}"))
    return C.Claim(
        "interventions.activation", "Changing the activation function from ReLU to tanh drastically affects the "
        "effective rank: the largest effect of the interventions (Section 5, Table 3).", "the ATE of ReLU -> tanh "
        "on final srank over the runs of the design (with its standard error), per game", "held if it is > 0 and "
        "> the size |ATE| of every other intervention's (one-sided z-tests, the weakest p < 0.05); not held if it "
        "is < 0 or below another's size by the same tests", tuple(evidence))


def claim_relu_threshold(runs: Runs, cfg: Config) -> C.Claim:
    rng = np.random.default_rng(0)
    evidence = []
    for env in dict.fromkeys(runs.env):
        sub = design_runs(runs, env).where(~design_runs(runs, env).treated[:, 0])
        if not np.isfinite(sub.norm_ret).any():
            evidence.append(C.Evidence(env, "not testable here", note="the data do not beat a random policy"))
            continue
        r = rank_threshold_effect(sub.srank, sub.norm_ret, 0.5, cfg.permutations, rng)
        flipped = rank_threshold_effect(sub.srank, -sub.norm_ret, 0.5, cfg.permutations, rng)["p"]
        if not np.isfinite(r["p"]):
            evidence.append(C.Evidence(env, "not testable here", note="srank ties leave no run above the median"))
            continue
        verdict = "held" if r["p"] < C.ALPHA else "not held" if flipped < C.ALPHA else "inconclusive"
        evidence.append(C.Evidence(env, verdict, r["ate"], r["ate"] - 1.96 * r["se"], r["ate"] + 1.96 * r["se"],
                                   r["p"], r["n"], f"{r['n_high']} runs above the median"))
    return C.Claim(
        "interventions.relu_threshold", "For ReLU networks, choosing a network with a high effective rank has a "
        "statistically significant positive effect on performance (Section 5, Table 1; the tanh results are "
        "mixed and not claimed).", "over the ReLU runs of the design, the ATE on normalised return of srank above "
        "its median (q = 0.5), per game", "held if the one-sided permutation p < 0.05; not held if the test in "
        "the other direction gives p < 0.05", tuple(evidence))


def claim_curl(m: C.Metrics, metric: str) -> C.Claim:
    evidence = []
    for env in m.values("env", study="curl_sweep"):
        weights = sorted(m.values("curl_weight", env=env, study="curl_sweep"))
        where = {"env": env, "study": "curl_sweep"}
        diff = C.final_values(m, metric, curl_weight=weights[-1], **where) - \
            C.final_values(m, metric, curl_weight=weights[0], **where)
        evidence.append(C.directional(env, diff, "greater" if metric == "srank" else "less",
                                      note=f"weight {weights[-1]:g} - {weights[0]:g}"))
    if metric == "srank":
        return C.Claim(
            "interventions.curl_rank", "Very large CURL weights prevent rank collapse (Section 8.2, Fig. 16).",
            "per seed, final srank with the largest CURL weight minus without CURL, in the control setting",
            "held if > 0 (one-sided sign-flip test, p < 0.05); not held if < 0", tuple(evidence))
    return C.Claim(
        "interventions.curl_return", "...but they simultaneously deteriorate the agent's performance (Section 8.2, "
        "Fig. 16).", "per seed, final return with the largest CURL weight minus without CURL", "held if < 0 "
        "(one-sided sign-flip test, p < 0.05); not held if > 0", tuple(evidence))


def bootstrap_runs(env: str, units: int, statistic: Callable[[np.ndarray], float], claimed: str,
                   note: str = "", resamples: int = 2_000) -> C.Evidence:
    """Evidence from a statistic over the design's runs (one seed each: the runs are the units):
    a bootstrap over runs gives a 95% interval and the one-sided p (the share of resamples on the
    other side of 0); held if p < 0.05 in the ``claimed`` direction, not held if in the other."""
    rng = np.random.default_rng(0)
    value = statistic(np.arange(units))
    boot = np.asarray([statistic(rng.integers(units, size=units)) for _ in range(resamples)])
    boot = boot[np.isfinite(boot)]
    if not np.isfinite(value) or len(boot) < resamples / 2:
        return C.Evidence(env, "not testable here", note=note or "the statistic is undefined on these runs")
    sign = 1 if claimed == "greater" else -1
    p_claim, p_other = float(np.mean(sign * boot <= 0)), float(np.mean(sign * boot >= 0))
    verdict = "held" if p_claim < C.ALPHA else "not held" if p_other < C.ALPHA else "inconclusive"
    low, high = np.percentile(boot, [2.5, 97.5])
    return C.Evidence(env, verdict, float(value), float(low), float(high), p_claim, units, note)


def claim_narrow_correlation(m: C.Metrics, cfg: Config) -> C.Claim:
    fs = factors(cfg)
    evidence = []
    for env in m.values("env", study="design"):
        settings = configurations(m, fs, env=env, study="design")
        points = [evaluation_points(m, env, [s]) for s in settings]
        narrow = np.asarray([not treated_bits(fs, s)[[0, 1, 2]].any() for s in settings])

        def gap(idx):
            pick = lambda keep: [points[i] for i in idx if keep[i]]
            cat = lambda ps: (np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps])) if ps else ([], [])
            return C.spearman(*cat(pick(narrow))) - C.spearman(*cat(pick(np.ones_like(narrow))))

        evidence.append(bootstrap_runs(env, len(settings), gap, "greater", note=f"{narrow.sum()} narrow runs"))
    return C.Claim(
        "interventions.narrow_correlation", "In a narrow setting rank and performance correlate; a broad "
        "hyperparameter sweep makes the correlation disappear (Section 4, Fig. 1).", "Spearman's rho between srank "
        "and return at every evaluation of the narrow setting's runs (ReLU, the control learning rate and target "
        "period) minus the same over every run of the design; bootstrap over runs", "held if > 0 (bootstrap "
        "one-sided p < 0.05); not held if < 0", tuple(evidence))


def claim_relu_correlation(runs: Runs) -> C.Claim:
    evidence = []
    for env in dict.fromkeys(runs.env):
        sub = design_runs(runs, env)

        def gap(idx):
            r = sub.where(idx)
            relu, tanh = ~r.treated[:, 0], r.treated[:, 0]
            return C.spearman(r.srank[relu], r.norm_ret[relu]) - C.spearman(r.srank[tanh], r.norm_ret[tanh])

        evidence.append(bootstrap_runs(env, len(sub.env), gap, "greater"))
    return C.Claim(
        "interventions.relu_correlation", "The network with ReLU activations strongly correlates rank and "
        "performance, whereas tanh does not (Section 5, Fig. 7).", "Spearman's rho between final srank and final "
        "normalised return over the ReLU runs of the design minus over the tanh runs; bootstrap over runs",
        "held if > 0 (bootstrap one-sided p < 0.05); not held if < 0", tuple(evidence))


SIMPSON_MIN = 0.3  # a subgroup trend: |rho| >= 0.3 in both subgroups, with the same sign


def simpson_paradoxes(runs: Runs, cfg: Config) -> list[str]:
    """Factors whose two subgroups show the same srank-return trend (|rho| >= SIMPSON_MIN, same sign)
    while the pooled runs do not (the pooled rho has the other sign or is within SIMPSON_MIN of 0)."""
    found = []
    pooled = C.spearman(runs.srank, runs.norm_ret)
    for i, f in enumerate(factors(cfg)):
        groups = [C.spearman(runs.srank[runs.treated[:, i] == t], runs.norm_ret[runs.treated[:, i] == t])
                  for t in (False, True)]
        if all(np.isfinite(groups)) and np.sign(groups[0]) == np.sign(groups[1]) and min(map(abs, groups)) >= \
                SIMPSON_MIN and (np.sign(pooled) != np.sign(groups[0]) or abs(pooled) < SIMPSON_MIN):
            found.append(f.key)
    return found


def claim_simpson(runs: Runs, cfg: Config) -> C.Claim:
    evidence = []
    for env in dict.fromkeys(runs.env):
        sub = design_runs(runs, env)
        if not np.isfinite(sub.norm_ret).any():
            evidence.append(C.Evidence(env, "not testable here", note="the data do not beat a random policy"))
            continue
        found = simpson_paradoxes(sub, cfg)
        evidence.append(C.Evidence(env, "not held" if found else "held", float(len(found)), n=len(sub.env),
                                   note=("a paradox in: " + ", ".join(found)) if found else "no factor shows one"))
    return C.Claim(
        "interventions.simpson", "Splitting the runs into subgroups by hyperparameter and model variant finds no "
        "trend that disappears when the subgroups are combined: no Simpson's paradox (Section 5).",
        "for each factor, Spearman's rho(final srank, final normalised return) within its two levels and pooled",
        f"held if no factor has both levels' rho of one sign with |rho| >= {SIMPSON_MIN} while the pooled rho has "
        f"the other sign or |rho| < {SIMPSON_MIN}; not held otherwise (a count, with no interval)", tuple(evidence))


SAM_MARGIN = 0.1  # "no clear relation": the change is within +-10% of the run without SAM


def claim_sam(m: C.Metrics, study: str) -> C.Claim:
    evidence = []
    for env in m.values("env", study=study):
        where = {"env": env, "study": study, "curl_weight": 0.0}
        rhos = sorted(m.values("sam_rho", **where))
        if len(rhos) < 2:
            evidence.append(C.Evidence(env, "not testable here", note="SAM was not run"))
            continue
        plain, sam = (C.final_values(m, "srank", sam_rho=r, **where) for r in (rhos[0], rhos[-1]))
        evidence.append(C.two_sided(env, (sam - plain) / plain, SAM_MARGIN, "equal", note="relative change"))
    figure = "Fig. 27" if study == "sam_pair" else "Fig. 28, the memory task standing in for DeepMind Lab"
    return C.Claim(
        f"interventions.sam{'' if study == 'sam_pair' else '_memory'}", f"There is no clear relation between "
        f"smoothing the loss with SAM and the feature ranks (Appendix A.4, {figure}).", "per seed, the final srank "
        "with SAM relative to without (the same seed, data and settings otherwise)", f"held if the 95% interval of "
        f"the relative change lies within +-{SAM_MARGIN:.0%}; not held if it excludes 0 and is not inside that "
        "margin", tuple(evidence))


def claim_memory_curl(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="memory"):
        where = {"env": env, "study": "memory", "sam_rho": 0.0}
        weights = sorted(m.values("curl_weight", **where))
        ret = np.stack([C.final_values(m, "return", curl_weight=w, **where) for w in weights])
        rhos = [C.spearman(np.log10(np.asarray(weights) + 1e-4), r) for r in ret.T]
        same = "; every weight returned the same" if np.all(ret == ret[:1]) else ""  # rho undefined
        evidence.append(C.two_sided(env, rhos, C.STRONG_CORRELATION, "equal", note=f"{len(weights)} weights{same}"))
    return C.Claim(
        "interventions.memory_curl", "Across CURL loss weights there is no consistent pattern (Appendix A.6, "
        "Fig. 30; the memory task standing in for DeepMind Lab).", "per seed, Spearman's rho between the CURL "
        "weight and the final return", f"held if the 95% interval of rho lies within +-{C.STRONG_CORRELATION} "
        "(no strong trend); not held if it excludes 0 and is not inside that margin (a consistent one)",
        tuple(evidence))


def claim_memory_rank_return(m: C.Metrics) -> C.Claim:
    evidence = []
    for env in m.values("env", study="memory"):
        variants = [(w, r) for w, r in dict.fromkeys(zip(m.data["curl_weight"][m.mask(env=env, study="memory")],
                                                          m.data["sam_rho"][m.mask(env=env, study="memory")]))]
        where = {"env": env, "study": "memory"}
        srank = np.stack([C.final_values(m, "srank", curl_weight=w, sam_rho=r, **where) for w, r in variants])
        ret = np.stack([C.final_values(m, "return", curl_weight=w, sam_rho=r, **where) for w, r in variants])
        rhos = [C.spearman(s, r) for s, r in zip(srank.T, ret.T)]
        same = "; every variant returned the same" if np.all(ret == ret[:1]) else ""  # rho undefined
        evidence.append(C.two_sided(env, rhos, C.STRONG_CORRELATION, "equal", note=f"{len(variants)} variants{same}"))
    return C.Claim(
        "interventions.memory_rank_return", "With CURL, with SAM, or as an aggregate, there is no strong "
        "correlation between the performance and the rank of the agent (Appendix A.3, Fig. 26; the memory task "
        "standing in for DeepMind Lab).", "per seed, Spearman's rho between final srank and final return over the "
        "variants (CURL weights and SAM)", f"held if the 95% interval of rho lies within +-{C.STRONG_CORRELATION}; not "
        "held if it excludes 0 and is not inside that margin", tuple(evidence))


def claims(m: C.Metrics, cfg: Config) -> list[C.Claim]:
    out = []
    if m.has(study="design"):
        runs = final_runs(m, cfg)
        out += [claim_activation_largest(runs, cfg), claim_relu_threshold(runs, cfg), claim_narrow_correlation(m, cfg),
                claim_relu_correlation(runs), claim_simpson(runs, cfg)]
    if m.has(study="curl_sweep"):
        out += [claim_curl(m, "srank"), claim_curl(m, "return")]
    if m.has(study="sam_pair"):
        out.append(claim_sam(m, "sam_pair"))
    if m.has(study="memory"):
        out += [claim_sam(m, "memory"), claim_memory_curl(m), claim_memory_rank_return(m)]
    return out


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
    fig.suptitle("Fig. 1: srank vs return at every evaluation after the start (one seed per configuration of the "
                 "design: n counts evaluation points, which are not independent)", fontsize=9)
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
        ax.set(title=f"{env} ({len(sub.env)} runs)", xlabel="final srank", ylabel="final normalised return")
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
    fig.suptitle(f"Fig. 8: pairs of interventions on final srank, pooled over the games ({len(runs.env)} runs, "
                 f"{cfg.design} factorial; the claims table's effects are per game"
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
    fig.suptitle(f"Fig. 16: CURL weight in the control setting ({C.seeds_note(m, env=envs[0], study='curl_sweep')};"
                 "\nweight 0 is trained in the CURL program, apart from Fig. 27's runs without SAM: other "
                 "random draws)")
    C.save_figure(fig, out, "fig16_curl_weights")


def plot_sam(plt, m: C.Metrics, out: Path, study: str, name: str, title: str) -> None:
    """Fig. 27 (the control setting) and Fig. 28 (the memory task): with and without SAM, the same
    seeds, data and settings otherwise."""
    envs = m.values("env", study=study)
    fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 6), squeeze=False, sharex="col")
    for j, env in enumerate(envs):
        for rho, style in zip(sorted(m.values("sam_rho", env=env, study=study)), ("--", "-")):
            for i, metric in enumerate(("srank", "return")):
                C.plot_band(axes[i, j], *m.curves(env=env, study=study, sam_rho=rho, curl_weight=0.0, metric=metric),
                            f"SAM radius {rho:g}" if i == 0 else None, "tab:purple", ls=style)
        axes[0, j].set(title=env, ylabel="srank")
        axes[1, j].set(ylabel="evaluation return", xlabel="gradient steps")
        axes[0, j].legend()
    fig.suptitle(f"{title} ({C.seeds_note(m, env=envs[0], study=study)})")
    C.save_figure(fig, out, name)


def plot_memory_curl(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 30 (the memory task standing in for DeepMind Lab): srank and return per CURL weight."""
    env = m.values("env", study="memory")[0]
    where = {"env": env, "study": "memory", "sam_rho": 0.0}
    weights = sorted(m.values("curl_weight", **where))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for w, color in zip(weights, plt.cm.viridis(np.linspace(0, 0.9, len(weights)))):
        steps, curves = m.curves(curl_weight=w, metric="srank", **where)
        C.plot_band(axes[0], np.maximum(steps, 1), curves, f"CURL weight {w:g}", color)
        C.plot_band(axes[1], *m.curves(curl_weight=w, metric="return", **where), None, color)
    axes[0].set(xscale="log", xlabel="gradient steps", ylabel="srank of the LSTM's output")
    axes[1].set(xlabel="gradient steps", ylabel="evaluation return")
    axes[0].legend()
    fig.suptitle(f"Fig. 30 (stand-in for DeepMind Lab): {env}, LSTM agent, CURL weights "
                 f"({C.seeds_note(m, **where)})")
    C.save_figure(fig, out, "fig30_memory_curl")


def plot_memory_rank_return(plt, m: C.Metrics, out: Path) -> None:
    """Fig. 26 (the memory task standing in for DeepMind Lab): final srank against final return of
    every variant and seed."""
    env = m.values("env", study="memory")[0]
    where = {"env": env, "study": "memory"}
    variants = list(dict.fromkeys(zip(m.data["curl_weight"][m.mask(**where)], m.data["sam_rho"][m.mask(**where)])))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    # Hollow markers of different shapes, so that variants on the same point all stay visible.
    for (w, rho), color, marker in zip(variants, plt.cm.tab10(np.arange(len(variants))), itertools.cycle("osD^v<>p")):
        s = C.final_values(m, "srank", curl_weight=w, sam_rho=rho, **where)
        r = C.final_values(m, "return", curl_weight=w, sam_rho=rho, **where)
        label = f"SAM {rho:g}" if rho else f"CURL {w:g}" if w else "plain"
        ax.scatter(s, r, facecolors="none", edgecolors=color, marker=marker, s=40, label=label)
    ax.set(xlabel="final srank", ylabel="final return")
    ax.set_title(f"{env}\n{claim_memory_rank_return(m).on(env)}", fontsize=7)
    ax.legend(fontsize=6)
    fig.suptitle(f"Fig. 26 (stand-in for DeepMind Lab): srank against return, LSTM agent with CURL and SAM\n"
                 f"(one marker per seed: {len(m.values('seed', **where))} seeds per variant)", fontsize=9, y=1.08)
    C.save_figure(fig, out, "fig26_memory_rank_vs_return")


def plot(m: C.Metrics, cfg: Config, out: Path) -> None:
    plt = C.plot_setup()
    if m.has(study="design"):
        runs = final_runs(m, cfg)
        plot_rank_vs_return_sweep(plt, m, cfg, out)
        plot_rank_vs_return_activation(plt, runs, out)
        plot_pairs(plt, runs, cfg, out)
    if m.has(study="curl_sweep"):
        plot_curl_sweep(plt, m, out)
    if m.has(study="sam_pair"):
        plot_sam(plt, m, out, "sam_pair", "fig27_sam", "Fig. 27: the control setting with and without SAM (its own "
                 "runs, apart from Fig. 16's)")
    if m.has(study="memory"):
        plot_sam(plt, m, out, "memory", "fig28_memory_sam", "Fig. 28 (stand-in for DeepMind Lab): the LSTM agent on "
                 "the memory task with and without SAM")
        plot_memory_curl(plt, m, out)
        plot_memory_rank_return(plt, m, out)


STUDY = C.Study("exp_interventions", __doc__.split("\n\n")[0], PRESETS, run, claims, plot, analyse, parts)

if __name__ == "__main__":
    C.main(STUDY)

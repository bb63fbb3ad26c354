"""`make bench`: gradient steps per second of the project's own offline trainer, side by side in one
run, with FLOPs per step from XLA's cost analysis and the fraction of a matmul peak measured here.

    make bench                       # writes results/bench/bench.json and prints a table
    python tests/bench.py --quick    # a shorter run (fewer timed steps)
    python tests/bench.py --paper    # on a GPU: the paper presets' programs, into bench_paper.json

Rows: the 2x64 MLP double DQN at batch 32 (the paper's bsuite setting) in the trainer's compiled
chunks, against the usual pattern (a Python loop calling one jitted step with a host-sampled
batch); the MinAtar CNN at batch 32 (im2col convolution) against a plain ``flax.linen.Conv``
network, and 48 MinAtar members on two devices in one call against the trainer's small groups;
the Nature CNN at batch 256; a 12-learning-rate sweep as one vmapped program against 12 separate
runs; evaluation episodes per second; and bytes per stored transition.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common as C  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    """Benchmark of the offline trainer (steps/s, FLOPs per step, roofline fraction)."""

    out: Path = Path("results/bench")
    """Directory for bench.json."""
    quick: bool = False
    """Time fewer steps (for a smoke check of the benchmark itself)."""
    devices: int = 0
    """(internal) time only the 60-member program (and on more than one device the 48 MinAtar members)
    on this many CPU devices, print its JSON, exit."""
    paper: bool = False
    """Time only the paper presets' training programs (Atari Nature CNN at batch 256, the interventions
    study's CURL and SAM programs, the bsuite LR sweep) on synthetic data, into bench_paper.json;
    meant for a GPU (needs no environment packages)."""


class FlaxConvMinAtarCNN(nn.Module):
    """The straightforward MinAtar network (``nn.Conv``), the baseline for C.MinAtarCNN."""

    num_actions: int

    @nn.compact
    def __call__(self, obs):
        x = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(obs.astype(jnp.float32)))
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_actions)(x), x


# The paper's bsuite training settings (batch 32, Adam, target period 100 as in exp_lr_sweep's cpu preset).
BSUITE = C.TrainConfig(num_steps=5_000, chunk_steps=5_000, batch_size=32, optimizer="adam", target_update_period=100,
                       probe_size=512, eval_every=0)


def synthetic_dataset(frame_shape, dtype, rows: int, num_actions: int, history: int = 1, seed: int = 0) -> C.Dataset:
    """Random transitions of the given observation shape (speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    obs = (rng.random((rows, *frame_shape)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    terminal = (rng.random(rows) < 0.01).astype(np.float32)
    return C.make_dataset(obs, rng.integers(num_actions, size=rows), rng.normal(size=rows), terminal,
                          np.arange(history - 1, rows - 1), num_actions, history)


def matmul_peak_flops(n: int = 1024, repeats: int = 20, trials: int = 5) -> float:
    """FLOP/s of a float32 n x n matmul on this device: the roofline the other rows are divided by.
    The best of several trials, since a peak is what the hardware can do: one cold trial once
    measured 123 GFLOP/s on a machine whose later trials gave 206-219."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            out = f(a)
        out.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def compiled_flops(fn, *args) -> float:
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def time_chunks(net, ds, cfg: C.TrainConfig, members, repeats: int, loss=C.DoubleDQN(0.99),
                gradient=C.plain_gradient, sharding=None, call: int = 0) -> tuple[float, float]:
    """(seconds per chunk, FLOPs per chunk) of the trainer's compiled chunk for these members
    (placed on ``sharding``, if given, as the trainer places them), in one call or, with ``call``,
    in calls of that many consecutive members one after the other, each group placed by
    ``C.member_sharding`` (the trainer's groups, ``C.call_size``)."""
    call = call or len(members)
    state = C.init_learners(net, ds.stacked_obs(ds.valid[:1]), C.seed_keys(m.seed for m in members),
                            [m.learning_rate for m in members], cfg.optimizer, loss)
    order = ds.valid
    settings = C.member_settings(members, cfg, len(ds))
    fn = C.make_chunk_fn(net, loss, gradient, cfg.optimizer, cfg.batch_size, cfg.chunk_steps)
    # XLA's cost analysis counts a loop body once, so FLOPs per step come from a one-step chunk,
    # compiled before placement: the whole program's FLOPs, not one device's share.
    one_step = C.make_chunk_fn(net, loss, gradient, cfg.optimizer, cfg.batch_size, 1)
    flops = compiled_flops(one_step, state, ds, order, settings) * cfg.chunk_steps
    groups = [jax.tree_util.tree_map(lambda x: x[a:a + call], (state, settings)) for a in range(0, len(members), call)]
    if sharding is not None:
        replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        groups = [C.place(g, sharding if call == len(members) else C.member_sharding(call)) for g in groups]
        ds, order = C.place((ds, order), replicated)

    def chunk():
        for i, (state, settings) in enumerate(groups):
            state, loss, _ = fn(state, ds, order, settings)
            groups[i] = (state, settings)
        return loss

    chunk().block_until_ready()  # compile and warm up
    start = time.perf_counter()
    for _ in range(repeats):
        loss = chunk()
    loss.block_until_ready()
    return (time.perf_counter() - start) / repeats, flops


def time_step_loop(net, ds, cfg: C.TrainConfig, steps: int) -> float:
    """Steps/s of the usual pattern: host-side sampling and one jitted update call per step."""
    opt = C.make_optimizer(cfg.optimizer, 3e-4)
    obs, action, reward = np.asarray(ds.obs), np.asarray(ds.action), np.asarray(ds.reward)
    discount, valid = 1.0 - np.asarray(ds.terminal), np.asarray(ds.valid)
    params = net.init(jax.random.key(0), obs[:1])
    target, opt_state = params, opt.init(params)

    @jax.jit
    def update(params, target, opt_state, batch):
        grads = jax.grad(lambda p: C.DoubleDQN(0.99)(net.apply, p, target, batch, {}, None)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state

    rng = np.random.default_rng(0)

    def one(params, opt_state):
        rows = valid[rng.integers(len(valid), size=cfg.batch_size)]
        batch = C.Batch(obs[rows], action[rows], reward[rows], discount[rows], obs[rows + 1], action[rows + 1],
                        reward[rows])
        return update(params, target, opt_state, batch)

    params, opt_state = one(params, opt_state)
    jax.block_until_ready(params)
    start = time.perf_counter()
    for i in range(steps):
        params, opt_state = one(params, opt_state)
        if (i + 1) % cfg.target_update_period == 0:
            target = params
    jax.block_until_ready(params)
    return steps / (time.perf_counter() - start)


def row(name: str, steps_per_s: float, flops_per_step: float, peak: float, **extra) -> dict:
    return {"name": name, "steps_per_s": float(f"{steps_per_s:.4g}"), "flops_per_step": flops_per_step,
            "roofline_fraction": round(steps_per_s * flops_per_step / peak, 4) if np.isfinite(flops_per_step) else None,
            **extra}


def paper_rows(peak: float, scale: float) -> list[dict]:
    """The paper presets' training programs, timed on synthetic data of the paper's shapes."""
    import exp_interventions as E  # the interventions study's CURL network and loss

    rows = []
    steps = max(2, int(100 * scale))
    atari = synthetic_dataset((84, 84), np.uint8, 20_000, 18, history=4)
    cfg = dataclasses.replace(BSUITE, batch_size=256, chunk_steps=steps, num_steps=steps, target_update_period=2_500)
    seconds, flops = time_chunks(C.NatureCNN(18), atari, cfg, [C.Member(0, 3e-5)], repeats=3,
                                 loss=C.DoubleDQN(0.99, clip_rewards=True))
    rows.append(row("paper_atari_dqn_b256", steps / seconds, flops / steps, peak))
    # One program of exp_interventions' paper preset: 16 configurations of one (activation, SAM)
    # group of the full design, CURL compiled in (weight 0 or 0.001 per member).
    net = E.CURLNetwork(C.NatureCNN(18))
    curl = E.TDWithCURL(C.DoubleDQN(0.99, clip_rewards=True), 4, (2, 3))
    for sam in (0.0, 0.05):
        members = [C.Member(i, 3e-5, settings={"sam_rho": sam, "curl_weight": 1e-3 * (i % 2)}) for i in range(16)]
        seconds, flops = time_chunks(net, atari, cfg, members, repeats=2, loss=curl,
                                     gradient=E.sam_gradient if sam else C.plain_gradient)
        rows.append(row(f"paper_interventions_16_members_curl{'_sam' if sam else ''}", 16 * steps / seconds,
                        flops / (16 * steps), peak, members=16))
    # exp_lr_sweep's paper preset on bsuite: 12 learning rates x 5 seeds as one program.
    catch = synthetic_dataset((10, 5), np.float32, 50_000, 3)
    cfg = dataclasses.replace(BSUITE, chunk_steps=int(5_000 * scale), num_steps=int(5_000 * scale))
    members = [C.Member(s, float(lr)) for s in range(5) for lr in np.geomspace(1e-5, 1e-1, 12)]
    seconds, flops = time_chunks(C.MLP(3, (64, 64)), catch, cfg, members, repeats=2)
    rows.append(row("paper_lr_sweep_60_members_mlp_b32", 60 * cfg.chunk_steps / seconds,
                    flops / (60 * cfg.chunk_steps), peak, members=60))
    return rows


def sweep_60(scale: float) -> tuple[float, float]:
    """(member-steps/s, FLOPs per member-step) of 12 learning rates x 5 seeds as one program, the
    members sharded over this process's devices (common.member_sharding, as the trainer does)."""
    catch = synthetic_dataset((10, 5), np.float32, 50_000, 3)
    mlp = C.MLP(3, (64, 64))
    cfg = dataclasses.replace(BSUITE, chunk_steps=int(5_000 * scale), num_steps=int(5_000 * scale))
    members = [C.Member(s, float(lr)) for s in range(5) for lr in np.geomspace(1e-5, 1e-1, 12)]
    sharding = C.member_sharding(len(members))
    seconds, flops = time_chunks(mlp, catch, cfg, members, repeats=2, sharding=sharding)
    return len(members) * cfg.chunk_steps / seconds, flops / (len(members) * cfg.chunk_steps)


def minatar_groups(scale: float) -> dict:
    """48 MinAtar members (the dataset-size study's 25 per game, rounded to whole groups) on this
    process's devices: member-steps/s in one call against the trainer's calls of ``C.call_size``."""
    minatar = synthetic_dataset((10, 10, 4), np.uint8, 50_000, 6)
    net = C.MinAtarCNN(6)
    cfg = dataclasses.replace(BSUITE, chunk_steps=int(500 * scale), num_steps=int(500 * scale))
    members = [C.Member(s, 3e-4) for s in range(48)]
    one = C.init_learners(net, minatar.obs[:1], C.seed_keys([0]), [3e-4], cfg.optimizer, C.DoubleDQN(0.99))
    call = C.call_size(len(members), sum(x.nbytes for x in jax.tree_util.tree_leaves(one)))
    sharding = C.member_sharding(len(members))
    whole, flops = time_chunks(net, minatar, cfg, members, repeats=2, sharding=sharding)
    grouped, _ = time_chunks(net, minatar, cfg, members, repeats=2, sharding=sharding, call=call)
    rate = lambda seconds: len(members) * cfg.chunk_steps / seconds
    return {"one_call": rate(whole), "grouped": rate(grouped), "call": call,
            "flops_per_step": flops / (len(members) * cfg.chunk_steps)}


def sweep_60_on(devices: int, scale: float) -> dict:
    """sweep_60 in a fresh process with ``devices`` CPU devices (the count is fixed at start-up)."""
    import subprocess

    proc = subprocess.run([sys.executable, __file__, "--devices", str(devices)] + (["--quick"] if scale < 1 else []),
                          capture_output=True, text=True, timeout=900, check=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args: Args) -> None:
    scale = 0.2 if args.quick else 1.0
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
        rate, flops = sweep_60(scale)
        print(json.dumps({"devices": jax.device_count(), "member_steps_per_s": rate, "flops_per_step": flops,
                          "minatar": minatar_groups(scale) if args.devices > 1 else None}))
        return
    peak = matmul_peak_flops(1024 if jax.devices()[0].platform == "cpu" else 8192)
    print(f"device: {jax.devices()[0]} ({jax.device_count()} device(s)); float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    rows = []
    if args.paper:
        rows = paper_rows(peak, scale)
        write_and_print(args.out, "bench_paper.json", peak, rows)
        return

    # --- the bsuite setting: 2x64 ReLU MLP, batch 32, catch-shaped data -------------------------
    catch = synthetic_dataset((10, 5), np.float32, 50_000, 3)
    mlp = C.MLP(3, (64, 64))
    cfg = dataclasses.replace(BSUITE, chunk_steps=int(5_000 * scale), num_steps=int(5_000 * scale))
    one = [C.Member(0, 3e-4)]
    seconds, flops = time_chunks(mlp, catch, cfg, one, repeats=4)
    mlp_rate = cfg.chunk_steps / seconds
    baseline = time_step_loop(mlp, catch, cfg, int(2_000 * scale))
    rows.append(row("step_loop_baseline", baseline, flops / cfg.chunk_steps, peak))
    rows.append(row("offline_dqn_mlp_b32", mlp_rate, flops / cfg.chunk_steps, peak,
                    speedup_vs_step_loop=round(mlp_rate / baseline, 2)))

    # --- 12 learning rates as one vmapped program against 12 separate runs ----------------------
    sweep = [C.Member(0, float(lr)) for lr in np.geomspace(1e-5, 1e-1, 12)]
    sweep_seconds, sweep_flops = time_chunks(mlp, catch, cfg, sweep, repeats=2)
    rows.append(row("lr_sweep_12", 12 * cfg.chunk_steps / sweep_seconds, sweep_flops / (12 * cfg.chunk_steps), peak,
                    cost_vs_12_separate_runs=round(sweep_seconds / (12 * seconds), 3),
                    cost_vs_one_run=round(sweep_seconds / seconds, 2)))

    # --- the paper's bsuite sweep, 12 learning rates x 5 seeds, on one and on two CPU devices -------
    on_devices = {d: sweep_60_on(d, scale) for d in (1, 2)}
    for d, r in on_devices.items():
        rows.append(row(f"sweep_60_members_{d}_device{'s' if d > 1 else ''}", r["member_steps_per_s"],
                        r["flops_per_step"], peak, members=60,
                        **({"speedup_vs_1_device": round(r["member_steps_per_s"] /
                                                         on_devices[1]["member_steps_per_s"], 2)} if d > 1 else {})))

    # --- 48 MinAtar members on two CPU devices: one call against calls of C.call_size ------------
    groups = on_devices[2]["minatar"]
    rows.append(row("minatar_48_members_2_devices_one_call", groups["one_call"], groups["flops_per_step"], peak,
                    members=48))
    rows.append(row("minatar_48_members_2_devices_grouped", groups["grouped"], groups["flops_per_step"], peak,
                    members=48, members_per_call=groups["call"],
                    speedup_vs_one_call=round(groups["grouped"] / groups["one_call"], 2)))

    # --- the probe: srank's SVD per member one at a time (the deadlock fix) against batched --------
    members = [C.Member(s, float(lr)) for s in range(2) for lr in np.geomspace(1e-5, 1e-1, 12)]
    params = C.init_learners(mlp, catch.obs[:1], C.seed_keys(m.seed for m in members),
                             [m.learning_rate for m in members], "adam").params
    probe = catch.stacked_obs(jnp.asarray(C.probe_rows(catch, 512)))
    batched = jax.jit(jax.vmap(lambda p: C.effective_rank(mlp.apply(p, probe)[1])))  # one SVD kernel: cannot wedge
    unbatched = jax.jit(C.per_member(lambda p: C.effective_rank(mlp.apply(p, probe)[1])))
    probe_seconds = {}
    for name, fn in (("batched", batched), ("per_member", unbatched)):
        fn(params).block_until_ready()
        start = time.perf_counter()
        for _ in range(20):
            fn(params).block_until_ready()
        probe_seconds[name] = (time.perf_counter() - start) / 20
    rows.append({"name": "probe_srank_24_members", "ms_per_probe_per_member": round(1e3 * probe_seconds["per_member"], 2),
                 "ms_per_probe_batched": round(1e3 * probe_seconds["batched"], 2),
                 "cost_of_the_deadlock_fix": round(probe_seconds["per_member"] / probe_seconds["batched"], 2)})

    # --- MinAtar CNN at batch 32: im2col against flax.linen.Conv --------------------------------
    minatar = synthetic_dataset((10, 10, 4), np.uint8, 50_000, 6)
    cfg_cnn = dataclasses.replace(cfg, chunk_steps=int(1_000 * scale), num_steps=int(1_000 * scale))
    seconds, flops = time_chunks(C.MinAtarCNN(6), minatar, cfg_cnn, one, repeats=3)
    flax_seconds, flax_flops = time_chunks(FlaxConvMinAtarCNN(6), minatar, cfg_cnn, one, repeats=2)
    rows.append(row("minatar_cnn_flax_conv_b32", cfg_cnn.chunk_steps / flax_seconds, flax_flops / cfg_cnn.chunk_steps,
                    peak))
    rows.append(row("offline_dqn_minatar_cnn_b32", cfg_cnn.chunk_steps / seconds, flops / cfg_cnn.chunk_steps, peak,
                    speedup_vs_flax_conv=round(flax_seconds / seconds, 2)))

    # --- Nature CNN at batch 256 (the paper's Atari setting) ------------------------------------
    atari = synthetic_dataset((84, 84), np.uint8, 5_000, 6, history=4)
    on_cpu = jax.devices()[0].platform == "cpu"
    steps = 2 if on_cpu else 200
    cfg_atari = dataclasses.replace(cfg, batch_size=256, chunk_steps=steps, num_steps=steps)
    seconds, flops = time_chunks(C.NatureCNN(6), atari, cfg_atari, one, repeats=1 if on_cpu else 5)
    rows.append(row("offline_dqn_nature_cnn_b256", steps / seconds, flops / steps, peak))

    # --- evaluation and storage ----------------------------------------------------------------
    # bsuite's dynamics batched in numpy (bit-for-bit bsuite, tests/test_common.py) against a loop over
    # bsuite's own environment objects: 600 cartpoles, as 60 members x 10 evaluation episodes.
    env_rates = {}
    for name, env in (("loop", C.BsuiteEnv("cartpole", 600, 0)), ("batched", C.make_env("bsuite/cartpole", 600, 0))):
        env.reset()
        actions = np.random.default_rng(0).integers(3, size=(int(200 * scale), 600))
        start = time.perf_counter()
        for a in actions:
            env.step(a)
        env_rates[name] = 600 * len(actions) / (time.perf_counter() - start)
    rows.append({"name": "bsuite_cartpole_env_steps_per_s_600_envs", "env_steps_per_s": round(env_rates["batched"]),
                 "bsuite_loop_env_steps_per_s": round(env_rates["loop"]),
                 "speedup_vs_bsuite_loop": round(env_rates["batched"] / env_rates["loop"], 1)})
    # Evaluation as dataset_size's studies call it (members x 8 greedy episodes, with the value
    # error), on parameters at their initialisation, the policy compiled beforehand. mountain_car
    # pays -1 a step, so its lowest return is the number of steps the evaluation loop ran.
    for env_id, members, shape in (("bsuite/mountain_car", 20, (1, 1, 3)), ("minatar/breakout", 25, (1, 10, 10, 4))):
        net = C.default_network(env_id, 3)
        params = C.initial_params(net, jnp.zeros(shape), list(range(members)))
        C.evaluate_policies(net, params, env_id, 8, seed=0, max_steps=2, gamma=0.99)  # compile
        start, steps, repeats = time.perf_counter(), 0, 1 if args.quick else 3
        for seed in range(1, 1 + repeats):
            returns, _ = C.evaluate_policies(net, params, env_id, 8, seed=seed, gamma=0.99)
            steps += int(-returns.min()) if env_id == "bsuite/mountain_car" else 0
        seconds = (time.perf_counter() - start) / repeats
        per_step = {"ms_per_step": round(1e3 * seconds * repeats / steps, 3)} if steps else {}
        rows.append({"name": f"eval_{env_id.split('/')[1]}_{members}x8",
                     "episodes_per_s": round(members * 8 / seconds, 1), **per_step})
    for name, ds, frame in (("minatar", minatar, 10 * 10 * 4), ("atari", atari, 84 * 84)):
        per = ds.nbytes() / ds.obs.shape[0]
        rows.append({"name": f"bytes_per_transition_{name}", "bytes": round(per, 1),
                     "frame_bytes": frame, "ratio_to_one_frame": round(per / frame, 3)})

    write_and_print(args.out, "bench.json", peak, rows)


def write_and_print(out: Path, name: str, peak: float, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps({"device": str(jax.devices()[0]), "machine": C.machine_description(),
                                        "matmul_peak_flops": peak, "rows": rows}, indent=2))
    print(f"\n{'name':34s} {'steps/s':>10s} {'MFLOP/step':>11s} {'roofline':>9s}  notes")
    for r in rows:
        notes = ", ".join(f"{k}={v}" for k, v in r.items()
                          if k not in ("name", "steps_per_s", "flops_per_step", "roofline_fraction"))
        if "steps_per_s" in r:
            print(f"{r['name']:34s} {r['steps_per_s']:10.4g} {r['flops_per_step'] / 1e6:11.3f} "
                  f"{(r['roofline_fraction'] or 0):9.2%}  {notes}")
        else:
            print(f"{r['name']:34s} {'':10s} {'':11s} {'':9s}  {notes}")
    print(f"\nwrote {out / name}")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))

"""Runs a command many times in fresh processes and counts the hangs: the check that the CPU
deadlock of batched LAPACK kernels (common.per_member) stays gone.

    python tests/hang_check.py --runs 20 -- python exp_activation.py --preset smoke --seeds 2 --out {tmp}/out
    python tests/hang_check.py --runs 20 --probe        # LSTM members' initialisation + a several-layer srank probe

``{tmp}`` in the command becomes a fresh directory per run (so no run resumes another's checkpoints).

A run that outlives its timeout is a hang: it gets SIGABRT (faulthandler prints its Python stacks
into the log) and counts as one. Prints one line per run and a summary; exits 1 on any hang.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import jax, jax.numpy as jnp
import common as C
import exp_activation as A
obs = jnp.zeros((1, 11, 3))
for cell in ("tanh", "relu"):  # the LSTM's orthogonal initialiser: a QR per gate and member
    state = C.init_learners(C.RecurrentQNetwork(2, 64, cell), obs, C.seed_keys(range(4)), [3e-4] * 4, "adam")
    jax.block_until_ready(state)
mlp = C.MLP(3, (64,) * 8, "relu", init_scheme="he")  # eight layers' SVDs per member in one program
params = C.initial_params(mlp, jnp.zeros((1, 50)), range(4))
print(A.layer_sranks(mlp, params, jax.random.normal(jax.random.key(0), (512, 50))).shape)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run counts as hung")
    parser.add_argument("--probe", action="store_true", help="run the LSTM-init and several-layer-probe script")
    parser.add_argument("command", nargs="*", help="the command to repeat (after --)")
    args = parser.parse_args()
    if args.probe:
        script = Path(tempfile.mkdtemp()) / "probe.py"
        script.write_text(PROBE)
        command = [sys.executable, str(script)]
    else:
        command = args.command
    if not command:
        parser.error("give a command after -- or --probe")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}
    hangs, failures, seconds = 0, 0, []
    for i in range(args.runs):
        start = time.time()
        with tempfile.TemporaryDirectory() as work, open(Path(work) / "log", "w+") as log:
            proc = subprocess.Popen([c.replace("{tmp}", work) for c in command], cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=args.timeout)
                status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
                failures += proc.returncode != 0
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                proc.wait()
                hangs += 1
                log.seek(0)
                status = "HUNG; stacks:\n" + log.read()[-3000:]
        seconds.append(time.time() - start)
        print(f"run {i + 1}/{args.runs}: {status} ({seconds[-1]:.0f} s)", flush=True)
    print(f"{args.runs} runs: {hangs} hung, {failures} failed; {sum(seconds):.0f} s in all, "
          f"median {sorted(seconds)[len(seconds) // 2]:.0f} s per run")
    sys.exit(1 if hangs or failures else 0)


if __name__ == "__main__":
    main()

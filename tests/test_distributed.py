"""Several processes, one run: two CPU processes joined by jax.distributed (a coordinator on
localhost) split the members over their devices and write the same metrics.csv, bit for bit, as one
process with as many devices. (One device per member shard either way: the programs each device
runs are the same.)"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = [str(REPO / "exp_lr_sweep.py"), "--preset", "smoke", "--studies", "dqn"]


def start(args, tmp_path, log, devices=1):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "RANKRL_DATA_DIR": str(tmp_path / "data"), "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen([sys.executable, *ARGS, *args, "--cpu-devices", str(devices)], cwd=tmp_path, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def finish(procs, logs, timeout=400):
    for proc, log in zip(procs, logs):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.send_signal(signal.SIGABRT)
            pytest.fail(f"a process hung; its stacks:\n{Path(log).read_text()[-4000:]}")
        assert proc.returncode == 0, Path(log).read_text()[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_metrics_of_one_process_with_two_devices(tmp_path):
    # The dataset first, so that the processes do not collect it at the same time.
    finish([start(["--out", "one", "--num-steps", "1000", "--eval-every", "500", "--chunk-steps", "500"], tmp_path,
                  tmp_path / "warm.log")], [tmp_path / "warm.log"])
    port = free_port()
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [start(["--out", "two", "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
                    str(i)], tmp_path, logs[i]) for i in range(2)]
    finish(procs, logs)
    finish([start(["--out", "single"], tmp_path, tmp_path / "single.log", devices=2)], [tmp_path / "single.log"])
    two, single = (tmp_path / "two" / "metrics.csv").read_bytes(), (tmp_path / "single" / "metrics.csv").read_bytes()
    assert two == single
    assert not (tmp_path / "two" / "metrics.csv.tmp").exists() and "Gloo" in logs[1].read_text()

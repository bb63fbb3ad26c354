"""Smoke runs of every experiment script (`--preset smoke`, seconds each) and their CLI errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in REPO.glob("exp_*.py"))


def run_script(script, *args, tmp_path):
    return subprocess.run([sys.executable, str(REPO / f"{script}.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400, env={**os.environ, "RANKRL_DATA_DIR": str(tmp_path / "data")})


@pytest.mark.smoke
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run_writes_results_and_figures(script, tmp_path):
    out = tmp_path / "out"
    proc = run_script(script, "--preset", "smoke", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["env", "agent", "config", "seed", "step", "metric", "value"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["args"]["preset"] == "smoke" and meta["wall_seconds"] > 0 and meta["git_commit"]
    claims = json.loads((out / "claims.json").read_text())
    assert claims and all({"id", "claim", "statistic", "value", "held"} <= set(c) for c in claims)
    figures = sorted(p.name for p in out.glob("fig*.png"))
    assert figures and all((out / f.replace(".png", ".pdf")).exists() for f in figures)
    # --plot-only redraws from metrics.csv alone.
    for f in out.glob("fig*"):
        f.unlink()
    proc = run_script(script, "--preset", "smoke", "--out", str(out), "--plot-only", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("fig*.png")) == figures


@pytest.mark.smoke
@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_environment_id_is_a_one_line_error(script, tmp_path):
    proc = run_script(script, "--preset", "smoke", "--env", "bsuite/nope", "--out", str(tmp_path / "o"),
                      tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown environment id 'bsuite/nope'" in proc.stderr


@pytest.mark.smoke
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_every_option(script, tmp_path):
    proc = run_script(script, "--help", tmp_path=tmp_path)
    assert proc.returncode == 0 and "--preset" in proc.stdout and "--plot-only" in proc.stdout


@pytest.mark.smoke
def test_missing_atari_data_is_a_clear_error(tmp_path):
    proc = run_script("exp_lr_sweep", "--preset", "smoke", "--env", "atari/Pong", "--data-dir", str(tmp_path / "none"),
                      "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr

"""Smoke runs of every experiment script (`--preset smoke`, seconds each) and their command line:
--help shows the chosen preset's values, bad options fail before any work, --plot-only redraws a
run with the config it was made with."""

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in REPO.glob("exp_*.py"))
SMOKE_TIMEOUT = 400  # seconds; a hang fails here with the child's Python stacks, not at CI's limit


def run_script(script, *args, tmp_path, timeout=SMOKE_TIMEOUT):
    """Runs a script in a fresh process. On a timeout the child gets SIGABRT, and faulthandler
    prints every thread's Python stack into the failure message."""
    env = {**os.environ, "RANKRL_DATA_DIR": str(tmp_path / "data"), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / f"{script}.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{script} {' '.join(args)} hung for {timeout} s; its stacks:\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.smoke
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run_writes_results_and_figures(script, tmp_path):
    out = tmp_path / "out"
    proc = run_script(script, "--preset", "smoke", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["study", "env", "agent", "seed"] and header[-3:] == ["step", "metric", "value"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["preset"] == "smoke" and meta["wall_seconds"] > 0 and meta["git_commit"] and meta["seconds"]
    module = importlib.import_module(script)
    assert meta["config"]["seeds"] == module.PRESETS["smoke"].seeds
    claims = (out / "claims.json").read_text()
    keys = {"id", "paper", "statistic", "rule", "evidence", "verdict", "summary"}
    assert json.loads(claims) and all(keys <= set(c) for c in json.loads(claims))
    verdicts = {"held", "not held", "inconclusive", "not testable here"}
    assert all(c["verdict"] in verdicts and all(e["verdict"] in verdicts for e in c["evidence"])
               for c in json.loads(claims))
    figures = sorted(p.name for p in out.glob("fig*.png"))
    assert figures and all((out / f.replace(".png", ".pdf")).exists() for f in figures)
    # --plot-only redraws from metrics.csv with the config saved in meta.json, and recomputes the claims.
    for f in out.glob("fig*"):
        f.unlink()
    (out / "claims.json").unlink()
    proc = run_script(script, "--out", str(out), "--plot-only", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("fig*.png")) == figures
    assert (out / "claims.json").read_text() == claims
    # ...and asking for another preset than the run's is an error that names both.
    proc = run_script(script, "--preset", "cpu", "--out", str(out), "--plot-only", tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--preset smoke" in proc.stderr and "not cpu" in proc.stderr


@pytest.mark.smoke
@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_environment_id_is_a_one_line_error(script, tmp_path):
    proc = run_script(script, "--preset", "smoke", "--env", "bsuite/nope", "--out", str(tmp_path / "o"),
                      tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown environment id 'bsuite/nope'" in proc.stderr


@pytest.mark.smoke
@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_options_fail_before_any_work(script, tmp_path):
    for option, value, message in (("--seeds", "0", "--seeds must be > 0"),
                                   ("--checkpoint-seconds", "-1", "--checkpoint-seconds must be >= 0")):
        proc = run_script(script, "--preset", "smoke", option, value, "--out", str(tmp_path / "o"), tmp_path=tmp_path,
                          timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == f"error: {message} (got {value})" or message in proc.stderr
        assert not (tmp_path / "data").exists()  # no dataset was collected


@pytest.mark.smoke
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_setting_with_the_chosen_presets_value(script, tmp_path):
    module = importlib.import_module(script)
    for preset in ("cpu", "smoke"):
        proc = run_script(script, "--preset", preset, "--help", tmp_path=tmp_path, timeout=60)
        assert proc.returncode == 0 and "--preset" in proc.stdout and "--plot-only" in proc.stdout
        text = " ".join(proc.stdout.split())
        assert "--seeds INT" in text and f"(default: {module.PRESETS[preset].seeds})" in text
        assert "{None}|INT" not in text and "{None}|FLOAT" not in text  # preset values, not None


@pytest.mark.smoke
def test_missing_atari_data_is_a_clear_error(tmp_path):
    proc = run_script("exp_lr_sweep", "--preset", "smoke", "--env", "atari/Pong", "--data-dir", str(tmp_path / "none"),
                      "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_preset_passes_its_own_checks(script):
    """A preset that its own Config.check rejects could only fail when someone runs it."""
    module = importlib.import_module(script)
    assert {"cpu", "long", "paper", "smoke"} <= set(module.PRESETS)
    for preset in module.PRESETS.values():
        preset.check()
        if module.STUDY.parts is not None:  # the README's presets table: one part per sub-study run
            assert [part.name for part in module.STUDY.parts(preset)] == list(preset.studies)

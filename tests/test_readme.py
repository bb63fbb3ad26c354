"""The README's tables and numbers are generated from the committed reference/ runs and bench JSON
(tests/update_readme.py); this fails when someone edits them by hand or commits new reference
results without regenerating the README (`make readme`)."""

import subprocess
import sys
from pathlib import Path

import pytest

from update_readme import differences  # tests/ is on pytest's path

REPO = Path(__file__).resolve().parents[1]


def reference_runs() -> list[tuple[str, Path]]:
    """(script, run directory) of every committed run: reference/<script>/<preset>/ and the
    replicates' reference/replicates/<name>/<script>/."""
    reference = REPO / "reference"
    return [(meta.parent.parent.name, meta.parent) for meta in sorted(reference.glob("exp_*/*/meta.json"))] \
        + [(meta.parent.name, meta.parent) for meta in sorted(reference.glob("replicates/*/exp_*/meta.json"))]


def test_readme_is_what_reference_generates():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "update_readme.py"), "--check", "--no-figures"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_reference_run_has_its_files():
    runs = reference_runs()
    assert runs, "reference/ holds no runs"
    for _, run in runs:
        assert (run / "metrics.csv.gz").exists() and (run / "claims.json").exists(), run


def test_claim_differences_ignore_only_the_last_float_bits():
    claim = {"id": "x", "verdict": "held", "evidence": [{"value": -2.8104978354978325, "n": 5, "p": None}]}
    assert differences(claim, {**claim, "evidence": [{"value": -2.810497835497826, "n": 5, "p": None}]}) == []
    assert differences(claim, {**claim, "evidence": [{"value": -2.8105, "n": 5, "p": None}]})
    assert differences(claim, {**claim, "evidence": [{"value": -2.8104978354978325, "n": 4, "p": None}]})
    assert differences(claim, {**claim, "evidence": [{"value": -2.8104978354978325, "n": 5, "p": 0.5}]})
    assert differences(claim, {**claim, "verdict": "not held"})
    assert differences(claim, {**claim, "evidence": []})


def test_redrawing_keeps_committed_claims_unless_a_claim_changed(tmp_path):
    import json

    from update_readme import keep_committed_claims

    committed = json.dumps([{"id": "x", "verdict": "held", "evidence": [{"value": -2.810497835497826}]}]).encode()
    path = tmp_path / "claims.json"
    last_bits = [{"id": "x", "verdict": "held", "evidence": [{"value": -2.8104978354978325}]}]
    path.write_text(json.dumps(last_bits))
    keep_committed_claims(path, committed)
    assert path.read_bytes() == committed
    changed = [{"id": "x", "verdict": "not held", "evidence": [{"value": -2.810497835497826}]}]
    path.write_text(json.dumps(changed))
    keep_committed_claims(path, committed)
    assert json.loads(path.read_text()) == changed


# One test per run, so the workers share them (all in one test took 89 s of a 474 s `make test`).
RUNS = reference_runs()


@pytest.mark.parametrize(("script", "run"), RUNS, ids=[str(run.relative_to(REPO / "reference")) for _, run in RUNS])
def test_committed_claims_are_what_the_code_computes(script, run):
    """Each reference run's claims.json is recomputed from its metrics.csv.gz and its resolved
    config: a change to a claim's statistic or rule must come with new reference verdicts."""
    import importlib
    import json

    import common as C

    study = importlib.import_module(script).STUDY
    config = C.config_from_json(type(study.presets["cpu"]), json.loads((run / "meta.json").read_text())["config"])
    computed = json.loads(json.dumps([C.jsonable(c) for c in study.claims(C.Metrics(C.metrics_path(run)), config)]))
    found = differences(computed, json.loads((run / "claims.json").read_text()), run.name)
    assert not found, f"{run}: {found[:3]}; run `python {script}.py --plot-only --out " \
        f"{run.relative_to(REPO)}` and commit"


def fake_run(directory: Path, verdicts: dict[str, str], machine: str, seeds: int = 5, dirty: bool = False,
             settings: dict | None = None, metrics: str = "step,metric,value\n0,srank,3.0\n",
             overall: str | None = None, preset: str = "cpu") -> None:
    """A committed run's meta.json, claims.json and metrics.csv.gz: one claim, one verdict per
    environment; the overall verdict held if every environment's is, else inconclusive, unless given."""
    import gzip
    import json

    directory.mkdir(parents=True)
    (directory / "metrics.csv.gz").write_bytes(gzip.compress(metrics.encode(), mtime=0))
    config = {"seeds": seeds, **(settings or {})}
    (directory / "meta.json").write_text(json.dumps({"preset": preset, "wall_seconds": 60.0, "machine": machine,
                                                     "git_commit": "0123456789", "git_dirty": dirty, "num_devices": 2,
                                                     "device": "cpu:0", "config": config}))
    evidence = [{"env": env, "verdict": v, "value": 1.0, "low": 0.5, "high": 1.5, "p": 0.03, "n": 5, "note": ""}
                for env, v in verdicts.items()]
    overall = overall or ("held" if all(v == "held" for v in verdicts.values()) else "inconclusive")
    (directory / "claims.json").write_text(json.dumps([{"id": "x.claim", "paper": "p", "statistic": "s", "rule": "r",
                                                        "verdict": overall, "summary": "s", "evidence": evidence}]))


def test_a_replicate_is_compared_verdict_by_verdict(tmp_path, monkeypatch):
    import update_readme as U  # tests/ is on the path, as for test_common's bench

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "REPLICATES", tmp_path / "replicates")
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem",))
    both = {"bsuite/catch": "held", "bsuite/cartpole": "held"}
    fake_run(tmp_path / "exp_tandem" / "cpu", both, "machine A")
    fake_run(tmp_path / "replicates" / "same" / "exp_tandem", both, "machine B")
    assert U.replicate_disagreements() == {}
    table = U.replicates_table()
    assert "repeated 1 of 1 overall verdicts and 2 of 2 per-environment verdicts" in table
    assert ("The compared script took 1.0 min, its reference run 1.0 min on machine A. The metrics of `exp_tandem` "
            "are the reference's byte for byte.") in table
    assert "per-environment verdicts." in table and "| claim |" not in table  # no empty table of differences
    assert "did not repeat" not in table
    fake_run(tmp_path / "replicates" / "other" / "exp_tandem", {**both, "bsuite/cartpole": "inconclusive"}, "C",
             metrics="step,metric,value\n0,srank,3.0000000000000004\n")
    assert list(U.replicate_disagreements()) == [("cpu", "x.claim", "bsuite/cartpole")]
    table = U.replicates_table()
    assert "repeated 0 of 1 overall verdicts and 1 of 2 per-environment verdicts" in table
    assert "The metrics of `exp_tandem` are not the reference's byte for byte." in table
    assert "The overall verdict it did not repeat: `x.claim` held in the reference, inconclusive in `other`." in table
    assert "The per-environment verdict it did not repeat:" in table
    cartpole = "1 [0.5, 1.5], p = 0.03, n = 5 ({})"
    assert f"| `x.claim` | cartpole | {cartpole.format('held')} | {cartpole.format('inconclusive')} |" in table
    claims = U.claims_table()
    assert f"cartpole: 1 [0.5, 1.5], p = 0.03, n = 5 (held) {U.REPEATED_NOT}" in claims
    assert f"catch: 1 [0.5, 1.5], p = 0.03 (held) {U.REPEATED_NOT}" not in claims


def test_an_overall_verdict_that_moved_is_named_when_every_environment_repeated(tmp_path, monkeypatch):
    """An overall verdict can move while every per-environment one repeats (a rule over the
    environments, or a claim whose overall verdict weighs more than its per-environment ones): the
    replicate's sentence names it, and of a `long` replicate against the `long` reference."""
    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "REPLICATES", tmp_path / "replicates")
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem",))
    catch = {"bsuite/catch": "held"}
    fake_run(tmp_path / "exp_tandem" / "long", catch, "machine A", preset="long")
    fake_run(tmp_path / "replicates" / "slow" / "exp_tandem", catch, "B", overall="not held", preset="long")
    table = U.replicates_table()
    assert "`slow` (`long`, 1 script)" in table
    assert "repeated 0 of 1 overall verdicts and 1 of 1 per-environment verdicts." in table
    assert "The overall verdict it did not repeat: `x.claim` held in the reference, not held in `slow`." in table
    assert "| claim |" not in table and U.replicate_disagreements() == {}
    fake_run(tmp_path / "exp_tandem" / "cpu", catch, "machine A")
    fake_run(tmp_path / "replicates" / "zed" / "exp_tandem", catch, "C")
    table = U.replicates_table()
    assert table.index("`zed` (`cpu`") < table.index("`slow` (`long`")  # by preset, then name


def two_references(tmp_path, monkeypatch, verdicts: dict[str, str]):
    """update_readme over a reference/ in tmp_path: exp_tandem's and exp_lr_sweep's `cpu` runs, made
    on machine A."""
    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "REPLICATES", tmp_path / "replicates")
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem", "exp_lr_sweep"))
    for script in U.SCRIPTS:
        fake_run(tmp_path / script / "cpu", verdicts, "machine A")
    return U


def test_a_replicate_of_several_scripts_says_which_metrics_repeated_byte_for_byte(tmp_path, monkeypatch):
    catch = {"bsuite/catch": "held"}
    U = two_references(tmp_path, monkeypatch, catch)
    fake_run(tmp_path / "replicates" / "r" / "exp_tandem", catch, "B")
    fake_run(tmp_path / "replicates" / "r" / "exp_lr_sweep", catch, "B", metrics="step,metric,value\n0,srank,2.0\n")
    table = U.replicates_table()
    assert "`r` (`cpu`, 2 scripts)" in table and "The 2 compared scripts took 2.0 min, their reference runs" in table
    assert "The metrics of 1 of the compared scripts (`exp_tandem`) are the reference's byte for byte." in table
    fake_run(tmp_path / "replicates" / "s" / "exp_tandem", catch, "C", metrics="step,metric,value\n0,srank,2.0\n")
    fake_run(tmp_path / "replicates" / "s" / "exp_lr_sweep", catch, "C", metrics="step,metric,value\n0,srank,2.0\n")
    assert "None of the compared scripts' metrics are the reference's byte for byte." in U.replicates_table()


def test_a_replicate_compares_times_only_of_runs_timed_whole(tmp_path, monkeypatch):
    """A run that resumed trainings without their earlier time timed only its own part: summing it
    beside a whole run would make one machine look faster. A resumed run whose checkpoints recorded
    what the trainings took before is timed whole."""
    import json

    catch = {"bsuite/catch": "held"}
    U = two_references(tmp_path, monkeypatch, catch)
    for script in U.SCRIPTS:
        fake_run(tmp_path / "replicates" / "r" / script, catch, "B")
    meta = tmp_path / "replicates" / "r" / "exp_lr_sweep" / "meta.json"
    resumed = {**json.loads(meta.read_text()), "resumed": {"dqn_0": "2 of 2 chunks"}}
    meta.write_text(json.dumps(resumed))
    table = U.replicates_table()
    assert ("The compared script timed whole (`exp_tandem`) took 1.0 min, its reference run 1.0 min on machine A. "
            "Not timed whole, so left out of the times: `exp_lr_sweep` (its run in this replicate resumed trainings "
            "whose earlier time was not recorded).") in table
    meta.write_text(json.dumps({**resumed, "resumed_seconds": {"dqn_0": 240.0}}))
    assert "The 2 compared scripts took 6.0 min, their reference runs 2.0 min on machine A." in U.replicates_table()
    # The reference side counts as well, and a replicate may have no script timed whole.
    for script in U.SCRIPTS:
        reference = tmp_path / script / "cpu" / "meta.json"
        reference.write_text(json.dumps({**json.loads(reference.read_text()), "resumed": {"bc_0": "1 of 2 chunks"}}))
    table = U.replicates_table()
    assert " took " not in table  # no times to set side by side
    assert "Not timed whole, so left out of the times: `" in table
    for script in U.SCRIPTS:
        assert f"`{script}` (its reference run resumed trainings whose earlier time was not recorded)" in table
    meta.write_text(json.dumps(resumed))
    assert "`exp_lr_sweep` (its run in this replicate and its reference run resumed" in U.replicates_table()


def test_a_figure_has_a_make_target_that_runs_the_script_that_draws_it():
    import os

    import update_readme as U

    assert U.script_of_figure("fig05") == "exp_lr_sweep" and U.script_of_figure("fig18_forked_tandem") == "exp_tandem"
    with pytest.raises(SystemExit, match="no figure 'fig99'"):
        U.script_of_figure("fig99")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}  # not the outer `make test`'s flags
    dry = lambda target: subprocess.run(["make", "-n", target], cwd=REPO, env=env, capture_output=True, text=True,
                                        timeout=60)
    assert "exp_lr_sweep.py --preset cpu --out results/exp_lr_sweep" in dry("fig05").stdout
    assert "exp_tandem.py --preset long" in dry("fig18-long").stdout
    assert dry("fig99").returncode != 0
    assert "meant for a GPU" in dry("fig15-long").stdout  # its error, printed by the dry run


def test_a_replicate_holds_the_runs_of_one_preset(tmp_path, monkeypatch):
    import update_readme as U

    monkeypatch.setattr(U, "REPLICATES", tmp_path / "replicates")
    fake_run(tmp_path / "replicates" / "m" / "exp_tandem", {"bsuite/catch": "held"}, "B")
    fake_run(tmp_path / "results" / "exp_tandem", {"bsuite/catch": "held"}, "B", preset="long")
    (tmp_path / "results" / "exp_tandem" / "metrics.csv").write_text("step,metric,value\n")
    with pytest.raises(SystemExit, match="holds cpu runs, not long"):
        U.promote("long", tmp_path / "results", ("exp_tandem",), replicate="m")
    U.promote("long", tmp_path / "results", ("exp_tandem",), replicate="m-long")
    assert (tmp_path / "replicates" / "m-long" / "exp_tandem" / "claims.json").exists()
    U.promote("long", tmp_path / "results", ("exp_tandem",), replicate="m-long")  # the same preset again


def test_a_replicate_of_other_settings_is_not_compared(tmp_path, monkeypatch):
    """A replicate made before its preset changed (here 2 seeds against the reference's 5) says so
    instead of counting verdicts of a different experiment as repeated or not."""
    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "REPLICATES", tmp_path / "replicates")
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem",))
    fake_run(tmp_path / "exp_tandem" / "cpu", {"bsuite/catch": "held"}, "machine A")
    fake_run(tmp_path / "replicates" / "old" / "exp_tandem", {"bsuite/catch": "inconclusive"}, "B", seeds=2)
    assert U.replicate_disagreements() == {}
    table = U.replicates_table()
    assert "`exp_tandem` is not compared: its reference run has other settings (seeds)" in table
    assert "repeated 0 of 0 overall verdicts" in table


def test_a_setting_added_since_the_reference_run_is_compared_at_its_default(tmp_path, monkeypatch):
    """A reference run made before a setting existed used what its default keeps; a replicate that
    records the setting at that default repeats the reference's settings, at another value it does not."""
    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "REPLICATES", tmp_path / "replicates")
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem",))
    fake_run(tmp_path / "exp_tandem" / "cpu", {"bsuite/catch": "held"}, "machine A")
    fake_run(tmp_path / "replicates" / "new" / "exp_tandem", {"bsuite/catch": "held"}, "B", settings={"gamma": 0.99})
    assert "repeated 1 of 1 overall verdicts" in U.replicates_table()
    fake_run(tmp_path / "replicates" / "other" / "exp_tandem", {"bsuite/catch": "held"}, "C", settings={"gamma": 0.9})
    assert "`exp_tandem` is not compared: its reference run has other settings (gamma)" in U.replicates_table()


def test_a_run_with_uncommitted_changes_says_so_in_the_run_times(tmp_path, monkeypatch):
    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem", "exp_lr_sweep"))
    fake_run(tmp_path / "exp_tandem" / "cpu", {"bsuite/catch": "held"}, "A")
    fake_run(tmp_path / "exp_lr_sweep" / "cpu", {"bsuite/catch": "held"}, "A", dirty=True)
    rows = {line.split(" | ")[0]: line for line in U.times_table().splitlines()}
    assert rows["| `exp_lr_sweep`"].endswith("| `0123456` + uncommitted changes |")
    assert rows["| `exp_tandem`"].endswith("| `0123456` |")


def test_the_run_times_say_what_no_phase_timed(tmp_path, monkeypatch):
    import json

    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem",))
    fake_run(tmp_path / "exp_tandem" / "cpu", {"bsuite/catch": "held"}, "A")
    meta = tmp_path / "exp_tandem" / "cpu" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "seconds": {"train": 40.0, "compile": 8.0}}))
    row = next(line for line in U.times_table().splitlines() if line.startswith("| `exp_tandem`"))
    assert "| train 40, untimed 12, compile 8 |" in row  # 60 s of wall time, 48 timed


def test_the_run_times_add_what_resumed_trainings_took_in_earlier_runs_where_it_is_known(tmp_path, monkeypatch):
    import json

    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem", "exp_lr_sweep"))
    for script, earlier in (("exp_tandem", {"a": 600.0, "b": 300.0}), ("exp_lr_sweep", {"c": None})):
        fake_run(tmp_path / script / "cpu", {"bsuite/catch": "held"}, "A")
        meta = tmp_path / script / "cpu" / "meta.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "resumed": {k: "2 of 2 chunks" for k in earlier},
                                    "resumed_seconds": earlier}))
    rows = {line.split(" | ")[0]: line for line in U.times_table().splitlines()}
    assert "| 1.0 min (resumed 2 trainings, which had taken 15.0 min in earlier runs) |" in rows["| `exp_tandem`"]
    assert "| 1.0 min (resumed 1 training from an earlier run) |" in rows["| `exp_lr_sweep`"]
    total = next(line for line in U.times_table().splitlines() if line.startswith("| all | `cpu`"))
    assert "| 2.0 min + 15.0 min of resumed trainings in earlier runs + the earlier runs' time |" in total


def test_the_presets_table_has_a_row_per_sub_study_and_says_which_the_reference_run_has(tmp_path, monkeypatch):
    import update_readme as U

    monkeypatch.setattr(U, "REFERENCE", tmp_path)
    monkeypatch.setattr(U, "SCRIPTS", ("exp_interventions", "exp_tandem"))
    fake_run(tmp_path / "exp_interventions" / "long", {"bsuite/memory_len": "held"}, "A",
             settings={"studies": ["memory"]})
    fake_run(tmp_path / "exp_tandem" / "cpu", {"bsuite/catch": "held"}, "A")
    rows = [line for line in U.presets_table().splitlines()[2:]]
    long = {line.split(" | ")[2]: line for line in rows if line.startswith("| `exp_interventions` | `long`")}
    assert list(long) == ["design", "curl_sweep", "sam_pair", "memory"]
    assert long["memory"].endswith("| bsuite/memory_len | 5 | 100,000 gradient steps | 4 CURL weights and SAM | yes |")
    assert long["design"].endswith("| 2 | 100,000 gradient steps | 16 configurations (quarter) | no |")
    assert all(line.endswith("| no |") for line in rows if "`exp_interventions` | `cpu`" in line)  # no cpu run
    assert [line.split(" | ")[-1] for line in rows if line.startswith("| `exp_tandem`")] == ["yes |", "no |"]


def test_redraw_deletes_a_figure_that_no_run_draws_any_more(tmp_path, monkeypatch):
    import json

    import update_readme as U

    monkeypatch.setattr(U, "REPO", tmp_path)
    monkeypatch.setattr(U, "REFERENCE", tmp_path / "reference")
    monkeypatch.setattr(U, "SCRIPTS", ("exp_tandem",))
    fake_run(tmp_path / "reference" / "exp_tandem" / "cpu", {"bsuite/catch": "held"}, "A")

    def plot(args, **kwargs):  # what `exp_tandem.py --plot-only --figures DIR` leaves there
        scratch = Path(args[args.index("--figures") + 1])
        scratch.mkdir(parents=True)
        (scratch / "fig_new.png").write_bytes(b"png")
        (scratch / "captions.json").write_text(json.dumps({"fig_new": "New"}))

    monkeypatch.setattr(U.subprocess, "run", plot)
    figures = tmp_path / "figures"
    (figures / "long").mkdir(parents=True)
    (figures / "fig_old.png").write_bytes(b"png")  # a figure renamed away
    (figures / "table9_old.md").write_text("| a |")  # a table, too
    (figures / "long" / "fig_gone.png").write_bytes(b"png")  # and a folder no run draws into any more
    (figures / "captions.json").write_text(json.dumps({"fig_old": {"title": "Old", "script": "exp_tandem"}}))
    U.redraw(figures)
    assert sorted(p.name for p in figures.rglob("*") if p.is_file() and p.name != "captions.json") == ["fig_new.png"]
    assert json.loads((figures / "captions.json").read_text()) == {"fig_new": {"title": "New", "script": "exp_tandem"}}
    assert json.loads((figures / "long" / "captions.json").read_text()) == {}

"""The README's tables and numbers are generated from the committed reference/ runs and bench JSON
(tests/update_readme.py); this fails when someone edits them by hand or commits new reference
results without regenerating the README (`make readme`)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_what_reference_generates():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "update_readme.py"), "--check", "--no-figures"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_reference_run_has_its_files():
    runs = sorted((REPO / "reference").glob("exp_*/*/meta.json"))
    assert runs, "reference/ holds no runs"
    for meta in runs:
        run = meta.parent
        assert (run / "metrics.csv.gz").exists() and (run / "claims.json").exists(), run


def test_committed_claims_are_what_the_code_computes():
    """Each reference run's claims.json is recomputed from its metrics.csv.gz and its resolved
    config: a change to a claim's statistic or rule must come with new reference verdicts."""
    import importlib
    import json

    import common as C

    for meta in sorted((REPO / "reference").glob("exp_*/*/meta.json")):
        run, study = meta.parent, importlib.import_module(meta.parent.parent.name).STUDY
        config = C.config_from_json(type(study.presets["cpu"]), json.loads(meta.read_text())["config"])
        computed = json.loads(json.dumps([C.jsonable(c) for c in study.claims(C.Metrics(C.metrics_path(run)), config)]))
        assert computed == json.loads((run / "claims.json").read_text()), f"{run}: run `python " \
            f"{run.parent.name}.py --plot-only --out {run.relative_to(REPO)}` and commit"

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


# Floats of a recomputed claim agree with the committed ones to this relative precision, not bit for
# bit: a least-squares fit (LAPACK) or a numpy reduction sums in another order on another CPU's
# instruction set (lr_sweep.inverted_u's fit differs in its 15th digit between an AVX-512 and an
# AVX2 machine). A changed statistic or rule moves a value far more than this.
CLAIM_FLOAT_RTOL = 1e-9


def differences(computed, committed, where: str = "") -> list[str]:
    """Where two claims.json trees differ: strings, verdicts and structure exactly, floats beyond
    CLAIM_FLOAT_RTOL."""
    import math

    if isinstance(computed, dict) and isinstance(committed, dict):
        if computed.keys() != committed.keys():
            return [f"{where}: keys {sorted(computed)} != {sorted(committed)}"]
        return [d for k in computed for d in differences(computed[k], committed[k], f"{where}.{k}")]
    if isinstance(computed, list) and isinstance(committed, list):
        if len(computed) != len(committed):
            return [f"{where}: {len(computed)} items != {len(committed)}"]
        return [d for i, (a, b) in enumerate(zip(computed, committed)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(computed, float) and isinstance(committed, (int, float)) and not isinstance(committed, bool):
        return [] if math.isclose(computed, committed, rel_tol=CLAIM_FLOAT_RTOL, abs_tol=1e-12) else \
            [f"{where}: {computed!r} != {committed!r}"]
    return [] if computed == committed and type(computed) is type(committed) else [f"{where}: {computed!r} != {committed!r}"]


def test_claim_differences_ignore_only_the_last_float_bits():
    claim = {"id": "x", "verdict": "held", "evidence": [{"value": -2.8104978354978325, "n": 5, "p": None}]}
    assert differences(claim, {**claim, "evidence": [{"value": -2.810497835497826, "n": 5, "p": None}]}) == []
    assert differences(claim, {**claim, "evidence": [{"value": -2.8105, "n": 5, "p": None}]})
    assert differences(claim, {**claim, "evidence": [{"value": -2.8104978354978325, "n": 4, "p": None}]})
    assert differences(claim, {**claim, "evidence": [{"value": -2.8104978354978325, "n": 5, "p": 0.5}]})
    assert differences(claim, {**claim, "verdict": "not held"})
    assert differences(claim, {**claim, "evidence": []})


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
        found = differences(computed, json.loads((run / "claims.json").read_text()), run.name)
        assert not found, f"{run}: {found[:3]}; run `python {run.parent.name}.py --plot-only --out " \
            f"{run.relative_to(REPO)}` and commit"

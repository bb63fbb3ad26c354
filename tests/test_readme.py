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

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Tests run on the CPU in a fixed, small configuration whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The scripts the tests start share one compilation cache for the session: the resume and
# multi-process tests run the same programs several times, and the smoke runs share their dataset
# collection, evaluation and probe programs. A cached program is the same executable, so metrics
# are unchanged: the resume and two-process tests, whose later runs load what an earlier run
# compiled, compare their metrics byte for byte. The first process makes the directory, its
# workers inherit it, and it is removed when that process exits.
if "RANKRL_TEST_JAX_CACHE" not in os.environ:
    os.environ["RANKRL_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="rankrl-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["RANKRL_TEST_JAX_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["RANKRL_TEST_JAX_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402

# Not in the test process itself: its tests read compiled programs' HLO and FLOP counts, which an
# executable loaded from the cache may not carry.
jax.config.update("jax_enable_compilation_cache", False)


# `make test` runs two workers, and the session lasts as long as the busier one. The tests that run
# for a minute or so start first, slowest first (durations measured at ff9b928 on 2 cores: the
# activation smoke run 108 s, recomputing every committed claim 78 s, the two-process run 65 s, the
# interventions smoke run 65 s, the tandem kill-and-resume 50 s, then 16-32 s), and the workers steal
# queued tests from each other (--dist worksteal): in collection order the smoke runs, in
# test_scripts.py, came last, and one worker ran the slowest of them alone at the end.
SLOWEST_FIRST = (
    "test_scripts.py::test_smoke_run_writes_results_and_figures[exp_activation]",
    "test_readme.py::test_committed_claims_are_what_the_code_computes",
    "test_distributed.py::",
    "test_scripts.py::test_smoke_run_writes_results_and_figures[exp_interventions]",
    "test_resume.py::test_tandem_run_killed",
    "test_scripts.py::test_smoke_run_writes_results_and_figures[exp_robustness]",
    "test_resume.py::test_offline_run_killed",
    "test_scripts.py::test_smoke_run_writes_results_and_figures",
    "test_replay_stream.py::test_the_trainer_samples_only_resident",
    "test_resume.py::",
    "test_sharding.py::",
)


def slowness_rank(nodeid: str) -> int:
    """Where a test starts: the index of the first SLOWEST_FIRST entry it matches, else after them all."""
    return next((i for i, part in enumerate(SLOWEST_FIRST) if part in nodeid), len(SLOWEST_FIRST))


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: slowness_rank(item.nodeid))  # stable: the others keep their order


# A test writes only under its own temporary directories (or ignored ones such as data/): files it
# leaves in the repository would otherwise be committed with the next `git add -A`. The controller
# process compares git's untracked files before and after the session and fails it on new ones.
REPO = Path(__file__).resolve().parents[1]
UNTRACKED = pytest.StashKey[set]()


def untracked_files() -> set[str]:
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    return {line[3:] for line in proc.stdout.splitlines() if line.startswith("??")} if proc.returncode == 0 else set()


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # not in an xdist worker
        session.config.stash[UNTRACKED] = untracked_files()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(UNTRACKED, None)
    if before is None:
        return
    left = sorted(untracked_files() - before)
    if left:
        print(f"\nthe tests left {len(left)} new file(s) in the repository, e.g. {left[:3]}")
        session.exitstatus = 1

import atexit
import os
import shutil
import tempfile

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

"""The test session's compiled-prior cache lives in a temporary directory, never in the user's."""

import os
import tempfile

os.environ["ANMC_CACHE_DIR"] = tempfile.mkdtemp(prefix="anmc-test-cache-")

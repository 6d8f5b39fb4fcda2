"""Skip markers shared by the test modules."""

import pytest

from lightnets_jax import onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="XLA's CPU runtime here has no oneDNN")

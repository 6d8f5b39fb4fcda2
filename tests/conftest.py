import os

# Tests run on the host CPU; several tests need more than one (virtual) device.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

"""The ``lightnets`` command (``main``), its benchmark (``bench``) and the process settings it
starts with (``cpu_memory``)."""

from lightnets_jax.cli.main import main

__all__ = ["main"]

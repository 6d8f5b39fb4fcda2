import sys

from lightnets_jax.cli.main import main

sys.exit(main())

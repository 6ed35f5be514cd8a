import sys

from open_r1_jax.eval.cli import main

sys.exit(main())

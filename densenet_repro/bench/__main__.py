"""`python -m densenet_repro.bench` (the same as `python -m densenet_repro bench`)."""

import sys

from densenet_repro.bench.cli import main

sys.exit(main())

"""`python -m datakd` (also what torchrun launches: `torchrun -m datakd distill ...`)."""

import sys

from datakd.cli import main

sys.exit(main())

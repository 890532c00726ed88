"""``python -m ambient_rlhf.cli ...`` (what ``torchrun`` and ``accelerate launch`` run)."""

import sys

from ambient_rlhf.cli import main

sys.exit(main())

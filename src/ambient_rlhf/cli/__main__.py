"""``python -m ambient_rlhf.cli`` (what torchrun / accelerate launch run): the ``ambient`` command."""

import sys

from ambient_rlhf.cli import main

sys.exit(main())

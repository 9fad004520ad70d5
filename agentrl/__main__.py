"""``python -m agentrl`` (each rank of ``agentrl launch`` / ``torchrun ... -m agentrl train``
runs it too): the command line."""

import sys

from agentrl.cli import main

sys.exit(main())

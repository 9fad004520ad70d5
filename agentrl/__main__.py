"""``python -m agentrl`` (and ``torchrun ... -m agentrl train CONFIG``): the command line."""

import sys

from agentrl.cli import main

sys.exit(main())

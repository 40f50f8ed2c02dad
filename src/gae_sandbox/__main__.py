"""``python -m gae_sandbox``: the same as the ``gae-sandbox`` command."""

import sys

from .cli import main

sys.exit(main())

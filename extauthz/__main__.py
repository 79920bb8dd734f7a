"""``python -m extauthz``: the same as the ``extauthz`` command."""

import sys

from extauthz.cli import main

sys.exit(main())

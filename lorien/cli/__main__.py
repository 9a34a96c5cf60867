"""``python -m lorien.cli …``: the same as the ``lorien`` console script."""

import sys

from lorien.cli import main

sys.exit(main())

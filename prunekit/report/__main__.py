"""``python -m prunekit.report <sweep dirs...> [--out DIR] [--paper] [--wandb]``."""

import sys

from prunekit.report.build import main

sys.exit(main())

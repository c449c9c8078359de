"""``python -m fluxtrain_migrate``."""

import sys

from fluxtrain_migrate.cli import main

sys.exit(main())

import sys
from pathlib import Path

# make tests/core/coreutil.py importable as `coreutil`
sys.path.insert(0, str(Path(__file__).parent))

import sys
from pathlib import Path

# make tests/explicit/explicitutil.py importable as `explicitutil`
sys.path.insert(0, str(Path(__file__).parent))

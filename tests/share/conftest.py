import sys
from pathlib import Path

# helpers.py lives one level up (tests/), next to the top-level conftest.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

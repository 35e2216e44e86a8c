"""The lab (top-level benchmarks/, not installed) is imported from the checkout: put its root on sys.path
whichever way pytest was started."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import os
import sys

# Tests import the package from the repository root (built in place by scripts/test.sh).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

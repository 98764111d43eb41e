"""``python -m fheestimators.deployment serve MODEL_DIR``: the same as ``fheestimators serve``."""
import sys

from .cli import main

# guarded: uvicorn's worker processes re-import this module under another name
if __name__ == "__main__":
    sys.exit(main())

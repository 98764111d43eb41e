"""``python -m fheestimators.deployment COMMAND``: the same as ``fheestimators COMMAND``.

COMMAND is serve, predict, keygen or info.
"""
import sys

from .cli import main

# guarded: uvicorn's worker processes re-import this module under another name
if __name__ == "__main__":
    sys.exit(main())

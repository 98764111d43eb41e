"""Integer programs to concrete-python circuits, and the three ways to run them."""
from .runtime import keep_exit_status

# Importing any part of fheestimators lands here first (every stage runs circuits through it).
keep_exit_status()

"""Integer programs to concrete-python circuits, and the three ways to run them."""

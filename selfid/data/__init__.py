"""Training and evaluation data: readers, the built-in MSRA source, identity data, mixing."""

"""Recommend alpha for a target eps and K: `python -m robust_ensembles.recommend` (the search and its runs)."""

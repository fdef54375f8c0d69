"""Speed, measured side by side in one run: `python -m robust_ensembles.bench`."""

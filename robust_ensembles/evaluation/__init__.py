"""Evaluating one model under attack: accuracy-vs-eps curves, per-point outcomes over every attack, sanity checks, and their store records."""

"""Statistics of the verdicts: paired differences of two models on the same test points, and differences over seed replicates and test points together."""

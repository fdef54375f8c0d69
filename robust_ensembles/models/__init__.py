"""Models: the architectures, ensembles attacked as one model, composites, and models built from store entries."""

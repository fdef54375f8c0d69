"""PGD adversarial training of a composite's head (`python -m robust_ensembles.finetune`)."""

from __future__ import annotations

from robust_ensembles.core.errors import ConfigError
from robust_ensembles.core.registry import stable_name
from robust_ensembles.models.composites import Composite
from robust_ensembles.training.adversarial import AdversarialTraining


@stable_name("composite_training")
class CompositeTraining(AdversarialTraining):
    """PGD adversarial training of a composite's head; the attack runs through the whole composite.

    Same metrics and checkpoint selection as `AdversarialTraining`; only parameters that require
    gradients (the head) are optimised, and the backbones stay in eval mode throughout.
    """

    def __init__(self, model: Composite, **kwargs):
        if not isinstance(model, Composite):
            raise ConfigError(f"CompositeTraining trains a Composite, got {type(model).__name__}.")
        super().__init__(model=model, **kwargs)

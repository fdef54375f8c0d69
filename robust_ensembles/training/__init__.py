"""Training one model into the store: the adversarial-training LightningModule, its schedules, callbacks, compilation, and the resumable fit."""

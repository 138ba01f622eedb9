"""Training: the masked-token objective and its mask-ratio laws, EMA, the LightningModule that glues them to a
backbone, the Trainer with durable checkpoints, and loading/importing checkpoints."""

"""``fit``, ``validate``, ``test`` and ``predict``: Lightning's loops over a config's model, data and Trainer
(:class:`~lit_nat.commands.objects.ConfiguredRun`)."""

from __future__ import annotations

from lit_nat.data import TokenShardDataModule
from lit_nat.training.loading import AssetLocations
from lit_nat.training.module import NATModule
from lit_nat.training.trainer import NATTrainer


def fit(trainer: NATTrainer, model: NATModule, datamodule: TokenShardDataModule, ckpt_path: str | None = None) -> None:
    """Train a model from a config (--config; --model.*, --data.*, --trainer.* override it).

    With the config's evaluation: section, validation computes FID with the current generation schedule; with its
    schedule_search: section, the schedule takes gradient steps between epochs. SIGTERM/SIGUSR1 (a preemption)
    saves the current step; the same command resumes it.

    Args:
        ckpt_path: resume from this checkpoint (a file, "last" for the run's newest, or a remote path): weights,
            optimizer, step, data position and schedule search, exactly.
    """
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)


def validate(trainer: NATTrainer, model: NATModule, datamodule: TokenShardDataModule, ckpt_path: str | None = None,
             assets: AssetLocations = AssetLocations()) -> None:  # fmt: skip
    """Validation loss, and FID (and CLIP score) of the config's evaluation: section, of a checkpoint with its own
    schedule or the config's (--model.schedule_source config).

    Args:
        ckpt_path: the checkpoint whose weights and schedule are validated (lit_nat's or an imported one).
    """
    assets.apply(model)
    trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path)


def test(trainer: NATTrainer, model: NATModule, datamodule: TokenShardDataModule, ckpt_path: str | None = None) -> None:
    """Loss on the config's test split.

    Args:
        ckpt_path: the checkpoint to test.
    """
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)


def predict(trainer: NATTrainer, model: NATModule, datamodule: TokenShardDataModule,
            ckpt_path: str | None = None) -> None:  # fmt: skip
    """Generate the data module's prediction plan of images (``sample`` writes them to files).

    Args:
        ckpt_path: the checkpoint to generate with.
    """
    trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)

"""TST Stage II as a stage event: at the start of the given epochs, search the tst augmenter's θ_p, θ_m."""

from __future__ import annotations

from datakd.api.run import RunControl
from datakd.augmenters.tst.augmenter import TSTAugmenter
from datakd.errors import ConfigError
from datakd.events.base import StageEvent, epoch_list, register_event


@register_event("tst_search")
class TSTSearch(StageEvent):
    """TST Stage II: before epochs `at` (CIFAR 30, 90), `epochs` passes tuning θ_p, θ_m of the tst augmenter.

    `at` follows the epoch-scaling rule (× schedule.scale); `epochs` is the number of passes over the
    training loader per call (paper: 1; the authors' configs: 1/5/10/30 per pair, see the recipes);
    `max_steps` caps the batches of each pass (quick runs).
    """

    def __init__(self, at: int | list[int] = (30, 90), epochs: int = 1, max_steps: int | None = None) -> None:
        self.at = epoch_list(list(at) if isinstance(at, tuple) else at)
        if any(a < 0 for a in self.at):
            raise ConfigError(f"tst_search.at must list epochs >= 0, got {self.at}")
        if not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"tst_search.epochs must be an integer >= 0, got {epochs!r}")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"tst_search.max_steps must be at least 1, got {max_steps}")
        self.epochs = epochs
        self.max_steps = max_steps

    def on_train_start(self, trainer: RunControl) -> None:
        if not isinstance(trainer.augmenter, TSTAugmenter):
            raise ConfigError(
                f"event tst_search needs augmenter tst, but this run uses "
                f"{trainer.cfg.augmenter.get('name')!r}"
            )
        if trainer.teacher is None:
            raise ConfigError("event tst_search needs a teacher: run with `datakd distill`")

    def on_epoch_start(self, trainer: RunControl, epoch: int) -> None:
        if self.epochs and epoch in {trainer.scaled_epoch(a) for a in self.at}:
            augmenter = trainer.augmenter
            assert isinstance(augmenter, TSTAugmenter)
            augmenter.search(trainer, epoch, self.epochs, self.max_steps)

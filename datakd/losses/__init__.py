"""Loss terms (one file each) and their pure functions in `datakd.losses.functional`."""

from datakd.losses.base import LOSSES, LossTerm, build_terms, register_loss

__all__ = ["LOSSES", "LossTerm", "build_terms", "register_loss"]

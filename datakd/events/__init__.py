"""Stage events: callbacks at epoch/step boundaries (teacher switch, optimizer reset, weight changes)."""

from datakd.events.base import EVENTS, StageEvent, build_events, register_event

__all__ = ["EVENTS", "StageEvent", "build_events", "register_event"]

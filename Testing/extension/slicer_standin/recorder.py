"""What the module asked of the stand-in parts of Slicer, in order, plus the answers its dialogs get."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recorder:
    """``events``: ``(kind, details...)`` tuples; ``confirm_answer``: what OK/Cancel dialogs return."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    confirm_answer: bool = True

    def record(self, kind: str, *details: Any) -> None:
        self.events.append((kind, *details))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        """The events of one kind (without the kind)."""
        return [e[1:] for e in self.events if e[0] == kind]

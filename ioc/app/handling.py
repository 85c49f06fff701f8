"""One handler per command, found in one table: `(state, command) -> (new state, Outcome, events)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .messages import Command, Event
from .services import Services
from .state import BeamlineState, Outcome


@dataclass
class Step:
    """One handler's run: the services, the state as the handler changes it, the events it raises."""

    services: Services
    state: BeamlineState
    events: list[Event] = field(default_factory=list)

    def change(self, **changes: Any) -> None:
        """Replace the state with `changes`."""
        self.state = replace(self.state, **changes)

    def emit(self, event: Event) -> None:
        self.events.append(event)


Handler = Callable[[Step, Any], Outcome]


@dataclass(frozen=True)
class Result:
    """What a handler left: the new state (also when it failed half-way: what it changed stays), its
    outcome or the error it raised, and its events."""

    state: BeamlineState
    outcome: Outcome | None
    error: Exception | None = None
    events: tuple[Event, ...] = ()


def handle(handlers: dict[type[Command], Handler], services: Services, state: BeamlineState,
           command: Command) -> Result:  # fmt: skip
    """Run the handler of `command` on `state` (blocking: the supervisor calls it in a worker thread)."""
    step = Step(services, state)
    try:
        outcome = handlers[type(command)](step, command)
    except Exception as error:  # the supervisor tells a DMagicError from a bug
        return Result(step.state, None, error, tuple(step.events))
    return Result(step.state, outcome, None, tuple(step.events))

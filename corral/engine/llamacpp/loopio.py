"""The batching loop's messages in (its inbox) and events out (what it hands to `emit` callbacks).

In: `Generate`, `Cancel`, `Call`, `Stop`, `Wake`, given to `BatchLoop.submit` from any thread. Out: engine
values, never wire dicts: a generation's `emit` gets `Chunk`s (text and logprobs; the last one
done, with its reason and metrics) or one `Failure`; a `Call`'s `emit` gets the function's result
or a `Failure`. The runner (runner.py) turns them into protocol lines. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.engine.base import Chunk, GenerateParams


@dataclass(frozen=True)
class Failure:
    """A request ended by an error (a CorralError; any other exception is an internal error)."""

    error: Exception


Event = Chunk | Failure
Emit = Callable[[Event], None]
Reply = dict[str, Any] | Failure
ReplyTo = Callable[[Reply], None]
Out = tuple[Callable[[Any], None], Event | Reply]  # one emit call, collected for `dispatch`


@dataclass(frozen=True)
class Generate:
    """Admit request `rid`; its events go to `emit` (on the loop thread, or through `dispatch`)."""

    rid: int
    params: GenerateParams
    emit: Emit


@dataclass(frozen=True)
class Cancel:
    """End request `rid` (waiting or running) without another event."""

    rid: int


@dataclass(frozen=True)
class Call:
    """Run `fn` on the loop thread between two steps; its result (or failure) goes to `emit`."""

    fn: Callable[[], dict[str, Any]]
    emit: ReplyTo


@dataclass(frozen=True)
class Stop:
    """End every sequence with an error event, then leave `run()`."""


@dataclass(frozen=True)
class Wake:
    """Nothing to do: an idle loop looks at its waiting prompts again (a prompt-cache disk read ended)."""


Message = Generate | Cancel | Call | Stop | Wake

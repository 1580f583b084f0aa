"""What a "connection" is: the entity the detector scores and alerts on.

The original demo's connection is the *session*, ``src_name / dest_name``. Other
connection kinds from the demo's first notebook are available by name. The id format
(fields joined by ``" / "``) is the demo's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

SEPARATOR = " / "

#: connection kind -> the event fields whose values, joined, identify it.
CONNECTION_KINDS: dict[str, tuple[str, ...]] = {
    "session": ("src_name", "dest_name"),
    "name_host_pair": ("src_name", "dest_name", "src_host", "dest_host"),
    "src_pair": ("src_name", "src_host"),
    "dest_pair": ("dest_name", "dest_host"),
    "src_name": ("src_name",),
    "dest_name": ("dest_name",),
    "src_host": ("src_host",),
    "dest_host": ("dest_host",),
}
DEFAULT_CONNECTION = "session"


def connection_fields(kind: str) -> tuple[str, ...]:
    """The fields that make up a connection of ``kind``; a clear error for unknown kinds."""
    try:
        return CONNECTION_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown connection kind {kind!r}; choose one of {sorted(CONNECTION_KINDS)}") from None


def connection_id(event: Any, kind: str = DEFAULT_CONNECTION) -> str:
    """The connection id of an event (an :class:`~cyberstream.schema.Event` or a mapping)."""
    fields = connection_fields(kind)
    if isinstance(event, Mapping):
        return SEPARATOR.join(event[f] for f in fields)
    return SEPARATOR.join(getattr(event, f) for f in fields)


def connection_id_of(kind: str = DEFAULT_CONNECTION) -> Callable[[Any], str]:
    """A fast ``connection_id(event, kind)`` for events (attribute access, no per-call lookups)."""
    fields = connection_fields(kind)
    get = attrgetter(*fields)
    if len(fields) == 1:
        return get
    return lambda event: SEPARATOR.join(get(event))

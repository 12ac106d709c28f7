"""Hot-path round trips on a connection of the caller's own, without ``redis.Redis``'s per-command layers.

A command through ``redis.Redis`` (or one of its pipelines) checks a connection out of the pool and back in,
runs a retry wrapper, builds observability attributes and passes the reply through a callback: about 70 us of
CPU per round trip here (redis-py 8), against about 25 us for packing with hiredis, one ``sendall`` and the
replies read straight off the connection. A handler makes three round trips per low-load batch, a client one
per request, so on the sequential path this overhead was a quarter of all the CPU a command cost.

Replies are RESP as Redis sends it (no callbacks, no decoding): bytes, integers, nested lists, ``None``. Errors
still arrive as redis-py's exception classes (``ResponseError``, ``NoScriptError``, ``ConnectionError``,
``TimeoutError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis

Command = Sequence[Any]


class DirectConnection:
    """One connection, used by one thread: :meth:`execute` for a round trip, or :meth:`send` then :meth:`read`.

    Every reply of a round trip is read before an error reply is raised, so the connection stays in step with
    the server. Anything else going wrong (a timeout, a dropped socket, an interrupted read) closes the
    connection: a reply still on its way can never be taken for the next round trip's. The next call connects
    again by itself.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._connection: redis.connection.AbstractConnection | None = None
        self._unread = 0

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` together and return their replies, in order."""
        self.send(commands)
        return self.read()

    def call(self, *command: Any) -> Any:
        return self.execute([command])[0]

    def send(self, commands: Sequence[Command]) -> None:
        """Send without waiting; :meth:`read` must come before the next ``send``."""
        assert self._unread == 0, "the replies of the previous round trip were not read"
        if not commands:
            return
        if self._connection is None:  # held until release(): checked out once, not per round trip
            self._connection = self._client.connection_pool.get_connection()
        try:
            self._connection.send_packed_command([hiredis.pack_command(tuple(c)) for c in commands])
        except BaseException:
            self._drop()
            raise
        self._unread = len(commands)

    def read(self) -> list[Any]:
        """The replies of the last :meth:`send`; raises the first error reply after reading them all."""
        count, self._unread = self._unread, 0
        if not count:
            return []
        assert self._connection is not None
        replies: list[Any] = []
        first_error: redis.ResponseError | None = None
        try:
            for _ in range(count):
                try:
                    replies.append(self._connection.read_response(disable_decoding=True))
                except redis.ResponseError as error:
                    first_error = first_error or error
                    replies.append(error)
        except BaseException:
            self._drop()
            raise
        if first_error is not None:
            raise first_error
        return replies

    def _drop(self) -> None:
        """Close the socket (a reply may still be on its way); the same connection object reconnects when used."""
        self._unread = 0
        if self._connection is not None:
            self._connection.disconnect()

    def release(self) -> None:
        """Give the connection back to the client's pool (a later call checks one out again)."""
        if self._unread:
            self._drop()
        if self._connection is not None:
            self._client.connection_pool.release(self._connection)
            self._connection = None


def single_stream_raw(response: Any) -> list[Any]:
    """The raw entries (``[id, [field, value, ...]]`` each) of an XREAD/XREADGROUP reply for one stream: a RESP3
    map or a RESP2 list of pairs."""
    if not response:
        return []
    if isinstance(response, dict):
        return next(iter(response.values()))
    return response[0][1]


def single_stream_entries(response: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of a raw XREAD/XREADGROUP reply for one stream, as ``(id, fields)`` pairs."""
    return stream_entries(single_stream_raw(response))


def stream_entries(raw: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """Raw stream entries (``[id, [field, value, ...]]`` each) as pairs; a deleted entry has no fields."""
    out: list[tuple[str, dict[bytes, bytes]]] = []
    for entry_id, flat in raw:
        fields: dict[bytes, bytes] = {}
        if flat:
            values = iter(flat)
            fields = dict(zip(values, values, strict=True))
        out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields))
    return out

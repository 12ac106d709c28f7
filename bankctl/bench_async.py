"""Connections for the open-loop load generator: asyncio streams, commands packed and replies parsed by hiredis.

The generator runs on the same two cores as the bank it measures, so every microsecond it spends is taken from
the bank. ``redis.asyncio`` cost about 320 us of CPU per request (pool checkout, a pipeline object, callbacks)
at 2,000 requests/s: a third of the machine, more than Redis and both handlers together. A request here is one
write and one or two reads of a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis

READ_CHUNK = 65536


class ReplyError(RuntimeError):
    """Redis answered a command with an error."""


class AsyncConnection:
    """One unix-socket connection; one round trip at a time (the pool hands it to one task at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader()

    @classmethod
    async def open(cls, socket_path: str) -> AsyncConnection:
        reader, writer = await asyncio.open_unix_connection(socket_path)
        return cls(reader, writer)

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send the commands together; their replies in order (an error reply raises after all are read)."""
        self._writer.write(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self._parser.gets()
            if reply is False:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                self._parser.feed(data)
                continue
            replies.append(reply)
        errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
        if errors:
            raise ReplyError(str(errors[0]))
        return replies

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


class AsyncPool:
    """A fixed set of connections; a task waits for a free one (that wait is part of the request's latency)."""

    def __init__(self, socket_path: str, size: int) -> None:
        self._socket_path = socket_path
        self._size = size
        self._free: asyncio.Queue[AsyncConnection] = asyncio.Queue()
        self._all: list[AsyncConnection] = []

    async def open(self) -> None:
        """Connect them all before the clock starts: a request should not pay for opening a connection."""
        self._all = list(await asyncio.gather(*(AsyncConnection.open(self._socket_path) for _ in range(self._size))))
        for connection in self._all:
            self._free.put_nowait(connection)

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        connection = await self._free.get()
        try:
            replies = await connection.execute(commands)
        except BaseException:
            await self._replace(connection)  # its replies may be out of step now
            raise
        self._free.put_nowait(connection)
        return replies

    async def _replace(self, broken: AsyncConnection) -> None:
        await broken.close()
        self._all.remove(broken)
        try:
            fresh = await AsyncConnection.open(self._socket_path)
        except OSError:
            return  # the pool shrinks; the remaining connections carry on
        self._all.append(fresh)
        self._free.put_nowait(fresh)

    async def close(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self._all))

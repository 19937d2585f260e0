"""One connection to Redis on which commands are pipelined: each is written at once, replies come in order.

The checkpoint batches of the session store are its only users. redis-py spends ~75-115 us of
the event loop's CPU around each command (a pooled connection behind a lock, a task for each
send's timeout, a timeout for each read): at K = 1 that is several microseconds a step. Here a
command is a ``writelines`` and a future; one reader task resolves the futures in order, and one
timer per command bounds its wait. The connection itself (TLS, AUTH, SELECT, a unix socket: all
the URL says) is made by redis-py, so it is the same connection the rest of the store uses.

A command the connection loses (it dropped, or a reply was overdue) fails with ``LineBroken``,
and so does every command behind it; the next command connects again. Whether to send it again
is the caller's choice: a fenced checkpoint may be (written twice, it is the same write).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

#: The most bytes of replies read at once (a batch of N checkpoints answers about 5 N).
READ_BYTES = 64 * 1024
#: How much a command's framed bytes may wait unsent in the connection's buffer before a sender
#: waits for it to drain (Redis slower than the commands): asyncio's own high-water mark.
WRITE_BUFFER_LIMIT = 64 * 1024


class LineBroken(ConnectionError):
    """The connection dropped, could not be made, or a reply was overdue: the command's fate is unknown."""


@dataclass(slots=True)
class _Waiting:
    """Commands sent together whose replies are being read: ``count`` of them, into ``replies`` as they come."""

    future: asyncio.Future[list[object]]
    count: int
    replies: list[object] = field(default_factory=list)


class RedisLine:
    """Commands framed by the caller (RESP), pipelined on one connection of ``pool``'s kind.

    Replies read back: a simple string or a bulk string as bytes, an integer as int, a null as
    None, an error as redis-py's exception (``NoScriptError`` for NOSCRIPT, else
    ``ResponseError``). Arrays are not read: no command sent here answers one.
    """

    def __init__(self, pool: redis.ConnectionPool, reply_timeout_s: float) -> None:
        self.pool = pool
        self.reply_timeout_s = reply_timeout_s
        self._connection: AbstractConnection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def call(self, pieces: Sequence[bytes]) -> object:
        """Sends one command, framed as ``pieces``, and returns its reply (an error reply is raised)."""
        (reply,) = await self.call_many(pieces, 1)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def call_many(self, pieces: Sequence[bytes], count: int) -> list[object]:
        """Sends ``count`` commands framed together as ``pieces``; their replies, an error reply as its exception.

        One future for them all: a batch of commands costs the loop one wake-up, not one each.
        """
        writer = self._writer
        if writer is None or writer.is_closing():
            writer = await self._connect()
        loop = asyncio.get_running_loop()
        replies: asyncio.Future[list[object]] = loop.create_future()
        writer.writelines(pieces)
        self._waiting.append(_Waiting(replies, count))
        overdue = loop.call_later(self.reply_timeout_s, self._overdue, replies)
        try:
            if writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                with contextlib.suppress(OSError):  # the connection is gone: the replies' future says why
                    await writer.drain()
            return await replies
        finally:
            overdue.cancel()
            if not replies.done():  # given up before its replies came: they are spent when they do
                replies.cancel()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer  # another command connected while this one waited
            await self._let_go()
            connection: AbstractConnection = self.pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except (redis.RedisError, OSError) as exc:
                raise LineBroken(f"cannot connect: {exc}") from exc
            # redis-py made the connection (TLS, AUTH, SELECT); its streams are not public API.
            reader: asyncio.StreamReader | None = connection._reader
            writer: asyncio.StreamWriter | None = connection._writer
            assert reader is not None and writer is not None
            self._connection, self._writer = connection, writer
            self._reading = asyncio.get_running_loop().create_task(self._read(reader), name="redis-line-reader")
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Reads the replies in order, resolving each batch's future once all of its are in, until the connection ends.

        Whatever has arrived is read at once and parsed from one buffer: a batch's replies cost
        one read, not a coroutine each.
        """
        buffer = b""
        try:
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    raise LineBroken("the connection to Redis ended")
                buffer = self._deliver(buffer + data if buffer else data)
        except (OSError, ValueError) as exc:
            self._break(LineBroken(f"the connection to Redis ended: {exc or type(exc).__name__}"))
        except LineBroken as exc:
            self._break(exc)

    def _deliver(self, buffer: bytes) -> bytes:
        """Hands every whole reply in ``buffer`` to its command; what is left (a reply cut short) is returned."""
        start, size = 0, len(buffer)
        while (end := buffer.find(b"\r\n", start)) >= 0:
            kind, body = buffer[start : start + 1], buffer[start + 1 : end]
            after = end + 2
            value: object
            if kind == b"+":
                value = body
            elif kind == b"$":
                length = int(body)
                if length < 0:
                    value = None
                else:
                    if after + length + 2 > size:
                        break  # the bulk string's bytes are still coming
                    value, after = buffer[after : after + length], after + length + 2
            elif kind == b":":
                value = int(body)
            elif kind == b"-":
                text = body.decode(errors="replace")
                value = (NoScriptError if text.startswith("NOSCRIPT") else ResponseError)(text)
            elif kind == b"_":
                value = None
            else:
                raise LineBroken(f"a reply this line does not read: {buffer[start : start + 40]!r}")
            self._resolve(value)
            start = after
        return buffer[start:]

    def _resolve(self, value: object) -> None:
        """The next reply: its command's, the oldest still waiting."""
        if not self._waiting:
            raise LineBroken("a reply to no command")
        waiting = self._waiting[0]
        waiting.replies.append(value)
        if len(waiting.replies) == waiting.count:
            self._waiting.popleft()
            if not waiting.future.done():  # else its caller gave up (overdue or cancelled)
                waiting.future.set_result(waiting.replies)

    def _overdue(self, replies: asyncio.Future[list[object]]) -> None:
        if not replies.done():
            self._break(LineBroken(f"no reply within {self.reply_timeout_s:g} s"))

    def _break(self, reason: LineBroken) -> None:
        """Fails every waiting command and lets go of the connection: a reply can no longer be matched."""
        waiting, self._waiting = self._waiting, collections.deque()
        for commands in waiting:
            if not commands.future.done():
                commands.future.set_exception(reason)
        if self._writer is not None:
            self._writer.transport.abort()  # not close(): that waits to send what is buffered, and a sender waits too
            self._writer = None
        reading, self._reading = self._reading, None
        if reading is not None and reading is not asyncio.current_task():
            reading.cancel()

    async def _let_go(self) -> None:
        """Disconnects the connection a break left behind (its streams are closed; redis-py tidies up)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def close(self) -> None:
        reading = self._reading
        self._break(LineBroken("the line was closed"))
        if reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        await self._let_go()

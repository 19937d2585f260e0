"""The checkpoint line (service/redis_line.py) against a real redis-server on loopback.

Commands pipelined on one connection must each get their own reply, in order, whatever happens
around them: a caller that gives up, an error reply, a Redis that stops answering or dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError, ResponseError

from service.redis_line import LineBroken, RedisLine, _Waiting
from tests.cluster import RedisServer, redis_server


def command(*words: bytes) -> list[bytes]:
    """A command framed as RESP, in pieces as the store frames its own."""
    return [b"*%d\r\n" % len(words), *(b"$%d\r\n%b\r\n" % (len(word), word) for word in words)]


def line_to(url: str, reply_timeout_s: float = 5.0) -> RedisLine:
    return RedisLine(aredis.ConnectionPool.from_url(url), reply_timeout_s)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def _clients(server: RedisServer) -> int:
    with server.client() as direct:
        return int(direct.info("clients")["connected_clients"]) - 1  # not counting itself


def test_many_commands_in_flight_on_one_connection_each_get_their_own_reply(store: RedisServer) -> None:
    values = [os.urandom(n) + b"\r\n$-1\r\n" for n in range(0, 3000, 7)]  # bytes RESP is made of, too

    async def scenario() -> tuple[list[object], int]:
        line = line_to(store.url)
        try:
            replies = await asyncio.gather(*(line.call(command(b"ECHO", value)) for value in values))
            return list(replies), _clients(store)
        finally:
            await line.close()

    replies, connections = asyncio.run(scenario())
    assert replies == values
    assert connections == 1, "one connection carried every command"


def test_each_kind_of_reply_is_read_back_as_redis_py_gives_it(store: RedisServer) -> None:
    async def scenario() -> None:
        line = line_to(store.url)
        try:
            assert await line.call(command(b"PING")) == b"PONG"
            assert await line.call(command(b"INCRBY", b"counter", b"41")) == 41
            assert await line.call(command(b"GET", b"nothing here")) is None
            with pytest.raises(NoScriptError, match="NOSCRIPT"):
                await line.call(command(b"EVALSHA", b"0" * 40, b"0"))
            with pytest.raises(ResponseError, match="wrong number of arguments") as refused:
                await line.call(command(b"GET"))
            assert not isinstance(refused.value, NoScriptError)
            assert await line.call(command(b"INCR", b"counter")) == 42, "an error reply leaves the line in step"
        finally:
            await line.close()

    asyncio.run(scenario())


def test_a_reply_kind_the_line_does_not_read_breaks_it_and_the_next_command_reconnects(store: RedisServer) -> None:
    async def scenario() -> object:
        line = line_to(store.url)
        try:
            with pytest.raises(LineBroken, match="does not read"):
                await line.call(command(b"MGET", b"a", b"b"))  # an array
            return await line.call(command(b"ECHO", b"again"))
        finally:
            await line.close()

    assert asyncio.run(scenario()) == b"again"


def test_a_caller_that_gives_up_does_not_take_the_next_commands_reply(store: RedisServer) -> None:
    async def scenario() -> list[object]:
        line = line_to(store.url)
        try:
            slow = asyncio.ensure_future(line.call(command(b"BLPOP", b"never", b"0.2")))
            await asyncio.sleep(0.05)
            slow.cancel()
            return [await line.call(command(b"ECHO", b"mine")), await line.call(command(b"ECHO", b"and mine"))]
        finally:
            await line.close()

    assert asyncio.run(scenario()) == [b"mine", b"and mine"]


def test_an_overdue_reply_fails_every_waiting_command_and_a_later_one_reconnects(store: RedisServer) -> None:
    assert store.process is not None
    pid = store.process.pid

    async def scenario() -> object:
        line = line_to(store.url, reply_timeout_s=0.3)
        try:
            await line.call(command(b"PING"))
            os.kill(pid, signal.SIGSTOP)
            try:
                waiting = [line.call(command(b"ECHO", b"%d" % i)) for i in range(3)]
                outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert all(isinstance(o, LineBroken) and "no reply within 0.3 s" in str(o) for o in outcomes), outcomes
            return await line.call(command(b"ECHO", b"after"))
        finally:
            await line.close()

    assert asyncio.run(scenario()) == b"after"


def test_a_redis_that_died_breaks_the_line_and_one_started_again_is_reached(store: RedisServer) -> None:
    async def scenario() -> object:
        line = line_to(store.url)
        try:
            await line.call(command(b"PING"))
            store.kill()
            with pytest.raises(LineBroken):
                await line.call(command(b"PING"))
            with pytest.raises(LineBroken, match="cannot connect"):
                await line.call(command(b"PING"))
            store.start()
            return await line.call(command(b"ECHO", b"back"))
        finally:
            await line.close()

    assert asyncio.run(scenario()) == b"back"


def test_the_line_connects_as_the_url_says_password_socket_and_database(tmp_path: Path) -> None:
    """redis-py makes the connection: AUTH and SELECT from the URL, over a unix socket."""
    socket = tmp_path / "redis.sock"
    with redis_server(tmp_path, password="s3cret", socket=socket) as server:

        async def scenario(url: str) -> object:
            line = line_to(url)
            try:
                return await line.call(command(b"SET", b"where", b"db 3"))
            finally:
                await line.close()

        assert asyncio.run(scenario(f"unix://:s3cret@{socket}?db=3")) == b"OK"
        with server.client() as direct, redis.Redis(port=server.port, password="s3cret", db=3) as third:
            assert direct.get("where") is None
            assert third.get("where") == b"db 3"
        with pytest.raises(LineBroken, match="cannot connect"):
            asyncio.run(scenario(f"unix://:wrong@{socket}?db=3"))


def test_a_sender_waiting_for_a_stopped_redis_to_take_its_bytes_is_freed_when_the_reply_is_overdue(
    store: RedisServer,
) -> None:
    """More bytes than the socket's buffers hold make the sender wait to send them; the reply timeout still holds."""
    assert store.process is not None
    pid = store.process.pid

    async def scenario() -> tuple[float, object]:
        line = line_to(store.url, reply_timeout_s=0.5)
        try:
            await line.call(command(b"PING"))
            os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            try:
                with pytest.raises(LineBroken, match=r"no reply within 0\.5 s"):
                    await asyncio.wait_for(line.call(command(b"ECHO", b"x" * 32_000_000)), 10)
                waited = time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)
            return waited, await line.call(command(b"ECHO", b"after"))
        finally:
            await line.close()

    waited, after = asyncio.run(scenario())
    assert waited < 3, f"the sender was held {waited:.1f} s"
    assert after == b"after"


def test_replies_cut_anywhere_by_the_socket_are_each_read_whole_once() -> None:
    """The reader parses whatever has arrived; a reply split across reads, at any byte, is read
    when its rest comes, and no reply is read twice or skipped."""
    replies = [
        b"+OK\r\n",
        b"$-1\r\n",
        b":42\r\n",
        b"$7\r\nab\r\n$-1\r\n",
        b"-NOSCRIPT none\r\n",
        b"_\r\n",
        b"$0\r\n\r\n",
    ]
    stream = b"".join(replies)
    expected = [b"OK", None, 42, b"ab\r\n$-1", "NOSCRIPT none", None, b""]

    async def read_in_two(cut: int) -> list[object]:
        line = RedisLine(aredis.ConnectionPool(), reply_timeout_s=5.0)
        future = asyncio.get_running_loop().create_future()
        line._waiting.append(_Waiting(future, len(replies)))  # as call_many leaves a batch sent
        left = line._deliver(stream[:cut])
        assert line._deliver(left + stream[cut:]) == b""
        return list(await future)

    for cut in range(len(stream) + 1):
        got = asyncio.run(read_in_two(cut))
        assert [str(v) if isinstance(v, Exception) else v for v in got] == expected, cut
        assert isinstance(got[4], NoScriptError)

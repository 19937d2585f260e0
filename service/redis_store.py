"""Sessions in Redis: checkpoints that outlive a process, and the owner epoch that fences them.

One hash per session, ``statestream:session:{id}``, with four fields: ``epoch`` (incremented
by every take-over), ``owner`` (the replica that holds the session now, "" when released),
``caller`` (who may resume it) and ``record`` (service/session_records.py). Every write is a Lua script that first compares the
writer's epoch with the stored one, so a replica that lost the session (it was taken over while
it was cut off, paused or slow) can write nothing more: its checkpoint is refused, and the step
it belonged to is refused to its client rather than acknowledged.

Each replica also listens on its own channel, ``statestream:replica:{id}``. A replica asked to
resume a session that another live replica holds publishes a hand-over request there; the owner
finishes the session's in-flight step, checkpoints, releases it and answers on a list the asker
waits on (BLPOP). A dead owner has no subscriber (PUBLISH counts none) and the asker takes over
at once; an owner that does not answer within the hand-over timeout is taken over all the same,
and fenced by the epoch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisError

from service.errors import Unavailable
from service.redis_line import LineBroken, RedisLine

log = logging.getLogger(__name__)

PREFIX = "statestream:"

#: KEYS the sessions; ARGV[1] the expiry to set (ms), ARGV[2] each session's epoch followed by "+"
#: (refresh its expiry) or "," (leave it), then each session's record. One character per session:
#: "1" written, "0" fenced (another epoch owns it, or it is gone). One script for a whole batch, one
#: round trip, one string to read back; the epochs in one argument and the expiry refreshed only
#: when it is due (RedisStore.refresh_s) cost Redis less per record than an argument and a PEXPIRE.
_CHECKPOINT_MANY = """
local written = {}
local i = 0
for epoch, refresh in string.gmatch(ARGV[2], '(%d+)([+,])') do
  i = i + 1
  if redis.call('HGET', KEYS[i], 'epoch') == epoch then
    redis.call('HSET', KEYS[i], 'record', ARGV[i + 2])
    if refresh == '+' then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
    written[i] = '1'
  else
    written[i] = '0'
  end
end
return table.concat(written)
"""

#: KEYS[1] the session; ARGV owner, record, ttl ms, caller. A new session at epoch 1; 0 if the id exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', '1', 'owner', ARGV[1], 'record', ARGV[2], 'caller', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

#: KEYS[1] the session; ARGV new owner. {epoch, record} after taking it over, or nil if it is gone.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return {epoch, redis.call('HGET', KEYS[1], 'record')}
"""

#: KEYS[1] the session; ARGV epoch. Lets go of a session (owner ""), if still its owner.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '')
return 1
"""

#: KEYS[1] the session; ARGV epoch. Deletes a closed session, if still its owner.
_DELETE = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def session_key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _command_head(arguments: int, sha: str, keys: int) -> bytes:
    """The start of an EVALSHA of ``arguments`` arguments in all (RESP): its name, script and key count."""
    return b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (arguments, _bulk(sha.encode()), _bulk(b"%d" % keys))


def replica_channel(replica: str) -> str:
    return f"{PREFIX}replica:{replica}"


class Checkpoint(NamedTuple):
    """One session's record, to be written if ``epoch`` still owns it; ``refresh``: set its expiry again.

    A tuple rather than a frozen dataclass: one is made per checkpointed step.
    """

    session_id: str
    epoch: int
    record: bytes
    refresh: bool = True


@dataclass(frozen=True)
class Stored:
    """Who holds a session in the store, under which epoch, and whose it is."""

    epoch: int
    owner: str
    caller: str


#: A checkpoint's flag in _CHECKPOINT_MANY's answer when it was written ("1").
WRITTEN = ord("1")

#: A session's expiry is set to its TTL and this fraction of it more, and refreshed by a checkpoint
#: only once that fraction has passed since the last refresh: a stored session outlives its last
#: checkpoint by at least the TTL, and by at most the TTL and 1/16 of it.
REFRESH_FRACTION = 16

#: Connections to the store at most; more concurrent commands wait for one (at most 5 s).
MAX_CONNECTIONS = 32

#: How long a checkpoint batch waits for Redis's answer before the store counts as unreachable.
CHECKPOINT_REPLY_S = 5.0

#: How long a stop waits for the hand-over listener to finish after it is cancelled.
LISTENER_STOP_S = 1.0


class RedisStore:
    """The Redis side of the session store: fenced writes, take-over and hand-over requests."""

    def __init__(self, url: str, ttl_s: float, handover_timeout_s: float) -> None:
        self.url = url
        self.replica = secrets.token_hex(8)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        #: How often a session's expiry is refreshed (seconds), and what it is set to (ms).
        self.refresh_s = ttl_s / REFRESH_FRACTION
        self.expiry_ms = self.ttl_ms + self.ttl_ms // REFRESH_FRACTION
        self.handover_timeout_s = handover_timeout_s
        # A bounded pool that makes a caller wait for a free connection: redis-py's plain pool
        # refuses the 101st concurrent command ("Too many connections"), which would read as
        # the store being unreachable when 256 sessions open at once.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=5.0, socket_connect_timeout=2.0, socket_timeout=5.0
        )
        self.client = redis.Redis.from_pool(pool)
        # Checkpoint batches, the hot path, go on a line of their own: pipelined, without the pool's waits.
        self._line = RedisLine(pool, reply_timeout_s=CHECKPOINT_REPLY_S)
        # Subscriptions wait for messages indefinitely: no read timeout on their connection.
        self._subscriber = redis.Redis.from_url(url, socket_connect_timeout=2.0)
        self._checkpoint_many = self.client.register_script(_CHECKPOINT_MANY)
        self._create = self.client.register_script(_CREATE)
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)
        self._delete = self.client.register_script(_DELETE)
        self._listener: asyncio.Task[None] | None = None

    async def _call(self, action: Awaitable[object], what: str) -> object:
        try:
            return await action
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the session store ({what}) is unreachable: {exc}") from exc

    async def ping(self) -> None:
        await self._call(self.client.ping(), f"ping {self.url}")

    async def create(self, session_id: str, caller: str, record: bytes) -> bool:
        created = await self._call(
            self._create(keys=[session_key(session_id)], args=[self.replica, record, self.expiry_ms, caller]), "create"
        )
        return bool(created)

    async def checkpoint_many(self, checkpoints: Sequence[Checkpoint]) -> list[bool]:
        """Writes many sessions' records in one command; each is True if written, False if fenced.

        The command is framed here (RESP) as a list of pieces, each record one piece as it is,
        and written as they are on the checkpoint line (service/redis_line.py): redis-py's packing
        costs ~1 us an argument, 3 a record, and its pooled round trip ~100 us a command.
        """
        pieces, epochs = [_command_head(2 * len(checkpoints) + 5, self._checkpoint_many.sha, len(checkpoints))], []
        for c in checkpoints:
            pieces.append(_bulk(session_key(c.session_id).encode()))
            epochs.append(b"%d%b" % (c.epoch, b"+" if c.refresh else b","))
        pieces += (_bulk(b"%d" % self.expiry_ms), _bulk(b"".join(epochs)))
        for c in checkpoints:
            pieces += (b"$%d\r\n" % len(c.record), c.record, b"\r\n")
        results = await self._call(self._evalsha(pieces, _CHECKPOINT_MANY), "checkpoint")
        assert isinstance(results, bytes) and len(results) == len(checkpoints)
        return [flag == WRITTEN for flag in results]

    async def _evalsha(self, pieces: list[bytes], script: str) -> object:
        """Sends an EVALSHA framed as ``pieces``; a script Redis does not know (restarted) is loaded, then sent again."""
        try:
            return await self._send(pieces)
        except NoScriptError:
            await self.client.script_load(script)
            return await self._send(pieces)

    async def _send(self, pieces: list[bytes]) -> object:
        """One command on the checkpoint line; one whose connection was lost is sent once more on a new one.

        Sending a fenced checkpoint again is safe: written twice, it is the same write, and one
        fenced in between is refused, so its step is not acknowledged.
        """
        try:
            return await self._line.call(pieces)
        except LineBroken:
            return await self._line.call(pieces)

    async def read(self, session_id: str) -> Stored | None:
        values = await self._call(self.client.hmget(session_key(session_id), ["epoch", "owner", "caller"]), "read")
        assert isinstance(values, list)
        epoch, owner, caller = values
        if epoch is None or caller is None:
            return None
        return Stored(int(epoch), owner.decode() if owner else "", caller.decode())

    async def ask_owner(self, session_id: str, owner: str) -> None:
        """Asks a live owner to hand the session over; returns once it has, or the wait is over."""
        reply = f"{PREFIX}handover:{session_id}:{secrets.token_hex(6)}"
        listeners = await self._call(self.client.publish(replica_channel(owner), f"{session_id} {reply}"), "hand-over")
        if not listeners or self.handover_timeout_s <= 0:
            return  # the owner is gone (no subscriber), or we do not wait
        await self._call(self.client.blpop([reply], timeout=self.handover_timeout_s), "hand-over")
        await self._call(self.client.delete(reply), "hand-over")

    async def claim(self, session_id: str) -> tuple[int, bytes] | None:
        """Takes the session over (a new epoch fences the old owner); None if the store lost it."""
        answer = await self._call(self._claim(keys=[session_key(session_id)], args=[self.replica]), "take-over")
        if answer is None:
            return None
        assert isinstance(answer, list)
        return int(answer[0]), bytes(answer[1])

    async def release(self, session_id: str, epoch: int) -> bool:
        return bool(await self._call(self._release(keys=[session_key(session_id)], args=[epoch]), "release"))

    async def delete(self, session_id: str, epoch: int) -> bool:
        return bool(await self._call(self._delete(keys=[session_key(session_id)], args=[epoch]), "delete"))

    async def answer(self, reply: str) -> None:
        await self._call(self.client.rpush(reply, b"1"), "hand-over")
        await self._call(self.client.pexpire(reply, 60_000), "hand-over")

    def listen(self, on_request: Callable[[str, str], Coroutine[Any, Any, None]]) -> None:
        """Starts answering hand-over requests sent to this replica's channel."""
        self._listener = asyncio.get_running_loop().create_task(self._listen(on_request), name="handover-listener")

    async def _listen(self, on_request: Callable[[str, str], Coroutine[Any, Any, None]]) -> None:
        while True:
            try:
                async with self._subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(replica_channel(self.replica))
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        session_id, reply = message["data"].decode().split(" ", 1)
                        asyncio.get_running_loop().create_task(on_request(session_id, reply))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:  # the store went away: listen again once it is back
                log.warning("hand-over listener lost the session store (%s); retrying", exc)
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Stops the hand-over listener and closes both connections, within LISTENER_STOP_S.

        A listener cancelled while its subscription is still being set up (a SIGTERM right after
        start) can fail to finish in redis-py's pub/sub clean-up; a stop must not wait on it.
        """
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=LISTENER_STOP_S)
        await self._line.close()
        await self.client.aclose()
        await self._subscriber.aclose()

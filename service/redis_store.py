"""Sessions in Redis: checkpoints that outlive a process, and the owner epoch that fences them.

A hash per session, ``statestream:session:{id}``: ``epoch`` (incremented by every take-over),
``owner`` (the replica holding it, "" when released) and ``caller`` (who may resume it). Its
record (service/session_records.py) is a string keyed by the epoch, ``statestream:record:{id}:
{epoch}``, which a take-over renames to the new epoch's key. A checkpoint is ``SET ... XX``: it
writes only while its epoch's key exists, so a replica that lost the session (taken over while
it was cut off, paused or slow) writes nothing more, and the step is refused to its client.

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
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisError

from service.errors import Unavailable
from service.redis_line import LineBroken, RedisLine

log = logging.getLogger(__name__)

PREFIX = "statestream:"

T = TypeVar("T")

#: KEYS[1] the session, KEYS[2] its record's key; ARGV[1] the expiry to set (ms), ARGV[2] the record.
#: A checkpoint due to refresh the expiry: 1 written (both keys' expiry set again), 0 fenced.
_CHECKPOINT_REFRESH = """
if not redis.call('SET', KEYS[2], ARGV[2], 'XX', 'PX', ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

#: KEYS[1] the session, KEYS[2] its record's key at epoch 1; ARGV owner, record, ttl ms, caller.
#: A new session at epoch 1; 0 if the id exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', '1', 'owner', ARGV[1], 'caller', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

#: KEYS[1] the session, KEYS[2] its records' key without the epoch; ARGV new owner.
#: {epoch, record} after taking it over (the record moves to the new epoch's key), or nil if it is
#: gone. A session stored before records had keys of their own (in the hash's ``record``) moves too.
_CLAIM = """
local old = redis.call('HGET', KEYS[1], 'epoch')
if not old then return nil end
local from = KEYS[2] .. old
local record = redis.call('GET', from)
local legacy = not record
if legacy then record = redis.call('HGET', KEYS[1], 'record') end
if not record then return nil end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
local to = KEYS[2] .. epoch
if legacy then
  redis.call('SET', to, record)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', to, ttl) end
  redis.call('HDEL', KEYS[1], 'record')
else
  redis.call('RENAME', from, to)
end
return {epoch, record}
"""

#: KEYS[1] the session; ARGV epoch. Lets go of a session (owner ""), if still its owner.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '')
return 1
"""

#: KEYS[1] the session, KEYS[2] its record's key at ARGV[1], the epoch. Deletes a closed session, if still its owner.
_DELETE = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1], KEYS[2])
"""


def session_key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


def records_key(session_id: str) -> str:
    """The session's records' key without the epoch: ``record_key``'s start."""
    return f"{PREFIX}record:{session_id}:"


def record_key(session_id: str, epoch: int) -> str:
    """Where the session's record is while ``epoch`` owns it."""
    return f"{records_key(session_id)}{epoch}"


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


#: What follows a checkpoint's record in its ``SET key record XX KEEPTTL`` (RESP): its two options.
_SET_TAIL = b"\r\n$2\r\nXX\r\n$7\r\nKEEPTTL\r\n"


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
        refresh_sha = self.client.register_script(_CHECKPOINT_REFRESH).sha.encode()
        #: The start of a refreshing checkpoint's EVALSHA (RESP), and its expiry argument.
        self._refresh_head = b"*7\r\n$7\r\nEVALSHA\r\n" + _bulk(refresh_sha) + _bulk(b"2")
        self._expiry = _bulk(b"%d" % self.expiry_ms)
        self._create = self.client.register_script(_CREATE)
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)
        self._delete = self.client.register_script(_DELETE)
        self._listener: asyncio.Task[None] | None = None

    async def _call(self, action: Awaitable[T], what: str) -> T:
        try:
            return await action
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the session store ({what}) is unreachable: {exc}") from exc

    async def ping(self) -> None:
        await self._call(self.client.ping(), f"ping {self.url}")

    async def create(self, session_id: str, caller: str, record: bytes) -> bool:
        created = await self._call(
            self._create(
                keys=[session_key(session_id), record_key(session_id, 1)],
                args=[self.replica, record, self.expiry_ms, caller],
            ),
            "create",
        )
        return bool(created)

    async def checkpoint_many(self, checkpoints: Sequence[Checkpoint]) -> list[bool]:
        """Writes many sessions' records in one round trip; each is True if written, False if fenced.

        Each record is a ``SET key record XX KEEPTTL``, framed here (RESP) with the record one
        piece as it is, all pipelined on the checkpoint line (service/redis_line.py). A plain SET
        costs Redis ~40 % less a record than a Lua script; a record due to refresh the expiry (once
        every TTL/16 a session) goes through _CHECKPOINT_REFRESH, which sets both keys' expiry.
        """
        replies = await self._call(self._checkpoint(checkpoints), "checkpoint")
        return [reply == b"OK" or reply == 1 for reply in replies]

    async def _checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[object]:
        """The batch's replies; a refresh Redis refused for not knowing its script (restarted) is loaded, then sent again."""
        replies = await self._send(self._framed(checkpoints), len(checkpoints))
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            await self.client.script_load(_CHECKPOINT_REFRESH)
            again = await self._send(self._framed([checkpoints[i] for i in unknown]), len(unknown))
            for i, reply in zip(unknown, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    def _framed(self, checkpoints: Sequence[Checkpoint]) -> list[bytes]:
        """The checkpoints' commands (RESP) as pieces, each record a piece of its own as it is."""
        pieces: list[bytes] = []
        for c in checkpoints:
            key = _bulk(record_key(c.session_id, c.epoch).encode())
            if c.refresh:
                hash_key = _bulk(session_key(c.session_id).encode())
                pieces += (
                    self._refresh_head,
                    hash_key,
                    key,
                    self._expiry,
                    b"$%d\r\n" % len(c.record),
                    c.record,
                    b"\r\n",
                )
            else:
                pieces += (b"*5\r\n$3\r\nSET\r\n", key, b"$%d\r\n" % len(c.record), c.record, _SET_TAIL)
        return pieces

    async def _send(self, pieces: list[bytes], count: int) -> list[object]:
        """``count`` commands on the checkpoint line; if the connection was lost, sent once more on a new one.

        Sending a checkpoint again is safe: written twice, it is the same write, and one fenced in
        between is refused, so its step is not acknowledged.
        """
        try:
            return await self._line.call_many(pieces, count)
        except LineBroken:
            return await self._line.call_many(pieces, count)

    async def read(self, session_id: str) -> Stored | None:
        values: object = await self._call(
            self.client.hmget(session_key(session_id), ["epoch", "owner", "caller"]), "read"
        )
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
        answer = await self._call(
            self._claim(keys=[session_key(session_id), records_key(session_id)], args=[self.replica]), "take-over"
        )
        if answer is None:
            return None
        assert isinstance(answer, list)
        return int(answer[0]), bytes(answer[1])

    async def release(self, session_id: str, epoch: int) -> bool:
        return bool(await self._call(self._release(keys=[session_key(session_id)], args=[epoch]), "release"))

    async def delete(self, session_id: str, epoch: int) -> bool:
        keys = [session_key(session_id), record_key(session_id, epoch)]
        return bool(await self._call(self._delete(keys=keys, args=[epoch]), "delete"))

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

"""A stream's admission, the same for every protocol: who is calling, and one more stream counted.

Refusals (a bad token, --max-streams reached) come only after the stream's first message is
read: a client whose first write races a status it has not read yet would otherwise see INTERNAL.
"""

from __future__ import annotations

from service.auth import Authenticator
from service.engine import SessionEngine
from service.errors import StatestreamError
from service.servicers.wire import Context
from service.session_log import events


async def admit_stream(engine: SessionEngine, auth: Authenticator, context: Context) -> str:
    """The stream's caller, the stream counted (pair with ``engine.leave_stream``); a refusal ends it."""
    try:
        caller = auth.caller(context)
        engine.enter_stream()
    except StatestreamError as exc:
        events.refused(exc)
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises
    return caller

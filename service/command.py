"""What every ``statestream`` command shares: its argument parser, its exit codes, its one error path.

A person at a terminal should see one line that says what went wrong and, where it helps, what
to do next; a traceback is for a bug, or for ``--debug``. Every command (serve, client, train,
export, eval, bench, loadtest) therefore builds its parser from :class:`Parser` and runs under
:func:`run`, which turns the errors a user can cause into one line on stderr and an exit code
that says which kind of failure it was, so a script can tell "fix your command" from "the
server said no" from "no server there". The codes are documented in docs/api.md.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

import grpc

PROGRAM = "statestream"

#: A bug, or a fault the server reported as its own (INTERNAL, UNKNOWN): not the user's doing.
EXIT_INTERNAL = 1
#: The command line itself is wrong: a bad flag or value, a missing file or folder, a busy port.
EXIT_USAGE = 2
#: The server answered and refused the request (bad input, unknown model, a limit, no token).
EXIT_REFUSED = 3
#: No answer: nothing listens at the target, it cannot be reached, or it is not taking requests.
EXIT_UNREACHABLE = 4
#: Stopped with Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
#: Whoever read the output stopped reading (``… | head``); the command ends quietly, as a tool
#: killed by SIGPIPE would (128 + 13).
EXIT_PIPE_CLOSED = 141

#: gRPC codes that mean "no usable answer from a server", not "the server said no".
UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: gRPC codes that mean the server failed, not the request.
SERVER_FAULT_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED}
)
DEBUG_FLAG = "--debug"


class CommandError(Exception):
    """An error a user can act on: printed as one line, ending the command with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, *, code: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code
        self.hint = hint

    def line(self) -> str:
        """``statestream: error: <what> (<CODE>); <hint>``: the one line a user sees."""
        return error_line(self.message, code=self.code, hint=self.hint)


def error_line(message: str, *, code: str = "", hint: str = "") -> str:
    text = " ".join(message.split())  # one line, whatever the message held
    return f"{PROGRAM}: error: {text}" + (f" ({code})" if code else "") + (f"; {hint}" if hint else "")


def _connect_reason(details: str) -> str:
    """The useful end of gRPC's 'failed to connect' details (e.g. 'Connection refused')."""
    match = re.search(r"(Connection refused|Connection reset by peer|No route to host|Name or service not known|"
                      r"Domain name not found|DNS resolution failed|Socket closed|Deadline Exceeded|"
                      r"handshake failed|Ssl handshake failed)", details, re.I)  # fmt: skip
    return match.group(1).lower() if match else ""


#: (a clue in the details, whether the client used TLS, what went wrong, what to do about it).
#: The connection was made, so a server is there; the TLS handshake is where the two disagree.
TLS_MISMATCHES = (
    (
        "socket closed",
        False,
        "the server{where} closed the connection: it expects TLS, and this client connected without",
        "connect with --tls-ca CA.pem (or --tls, for a certificate from a public CA)",
    ),
    (
        "socket closed",
        True,
        "the server{where} closed the connection in the TLS handshake: it requires a client certificate it trusts",
        "give --tls-cert and --tls-key, signed by the CA of the server's --tls-client-ca",
    ),
    (
        "wrong_version_number",
        True,
        "the TLS handshake with the server{where} failed: it does not speak TLS",
        "drop --tls and --tls-ca, or start the server with --tls-cert and --tls-key",
    ),
    (
        "certificate_verify_failed",
        True,
        "the TLS handshake with the server{where} failed: its certificate is not signed by a CA this client trusts",
        "give the CA that signed it with --tls-ca",
    ),
)


def _unreachable(code: grpc.StatusCode, details: str, target: str, tls: bool | None) -> CommandError:
    """No answer: a TLS mismatch where the details show one (``tls`` None: not known), else "cannot reach"."""
    where = f" at {target}" if target else ""
    lowered = details.lower()
    for clue, with_tls, what, hint in TLS_MISMATCHES:
        if clue in lowered and with_tls is tls:
            return CommandError(what.format(where=where), EXIT_UNREACHABLE, code=code.name, hint=hint)
    reason = _connect_reason(details)
    hint = (
        "check --tls-ca, --tls-cert/--tls-key and --tls-server-name against the server's TLS set-up"
        if "handshake" in reason
        else "is 'statestream serve' running there? Set the address with --target HOST:PORT"
    )
    return CommandError(
        f"cannot reach a statestream server{where}" + (f": {reason}" if reason else ""),
        EXIT_UNREACHABLE,
        code=code.name,
        hint=hint,
    )


def rpc_error(code: grpc.StatusCode, details: str, *, target: str = "", tls: bool | None = None) -> CommandError:
    """The CommandError for a call that ended with a gRPC status: refused, unreachable, or a server fault.

    ``tls`` says whether the client connected with TLS (None: not known), so that a failed
    handshake can be told from a server that is not there.
    """
    details = details or ""
    if code in UNREACHABLE_CODES:
        if "failed to connect" in details or _connect_reason(details) or not details:
            return _unreachable(code, details, target, tls)
        return CommandError(details, EXIT_UNREACHABLE, code=code.name)
    if code in SERVER_FAULT_CODES:
        return CommandError(details or "the server failed", EXIT_INTERNAL, code=code.name)
    hint = "give a token with --token-file or --token" if code == grpc.StatusCode.UNAUTHENTICATED else ""
    return CommandError(details or code.name.lower(), EXIT_REFUSED, code=code.name, hint=hint)


def call_error(exc: grpc.RpcError, *, target: str = "", tls: bool | None = None) -> CommandError:
    """The CommandError for a failed gRPC call (grpc.aio's AioRpcError or the sync API's error)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return rpc_error(code, details or "", target=target, tls=tls)


#: The project's packages that a serving-only install (the container image, the wheel of
#: ``service/``) leaves out, with the extra a source install needs for the commands that use them.
NOT_SERVING_PACKAGES = {"training": "train", "loadtest": "dev"}


def classify(exc: BaseException) -> CommandError | None:
    """The user-facing form of ``exc``, or None when it is a bug (which keeps its traceback)."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return call_error(exc)
    package = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    if package in NOT_SERVING_PACKAGES:
        return CommandError(
            f"this command needs the project's {package!r} package, which a serving-only install leaves out",
            EXIT_USAGE,
            hint=f"run it from a source checkout: pip install -e '.[cpu,{NOT_SERVING_PACKAGES[package]}]'",
        )
    return None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends each option's default to its help, unless the help already states one or there is none.

    argparse's ArgumentDefaultsHelpFormatter prints ``(default: None)`` for an option that is
    simply off until given, which tells a reader nothing; this one leaves those out and keeps
    descriptions as written (line breaks included).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text or not action.option_strings:
            return text
        off = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if off or isinstance(action, argparse._HelpAction):  # `is`: a default of 0 is a value worth showing
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``statestream: error:`` line, exiting with EXIT_USAGE.

    Every parser also accepts ``--debug`` (read by :func:`debug_requested` before parsing), so
    it may be given anywhere on the command line and shows in every ``--help``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            DEBUG_FLAG, action="store_true", default=argparse.SUPPRESS, help="print the traceback of an error too"
        )

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")  # "--port: 70000 is out of range (0-65535)"
        self.exit(EXIT_USAGE, error_line(message, hint=f"see '{self.prog} --help'") + "\n")


class OutOfRange(argparse.ArgumentTypeError, ValueError):
    """A value a numeric option cannot take; the message names the value and the range.

    argparse prints an ArgumentTypeError's message as it is; code that converts environment
    variables catches it as the ValueError it also is.
    """


N = TypeVar("N", int, float)


@dataclass(frozen=True)
class InRange(Generic[N]):
    """An argparse ``type``: a whole number (``int_in``) or a finite number (``float_in``) in ``[low, high]``.

    ``high`` None leaves the top open. The bounds are attributes, so a test (or a help text) can
    read the range a flag accepts.
    """

    kind: type[N]
    low: N
    high: N | None = None

    def __call__(self, text: str) -> N:
        what = "a whole number" if self.kind is int else "a number"
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise OutOfRange(f"{text!r} is not {what}") from None
        if self.kind is float and not math.isfinite(value):
            raise OutOfRange(f"{text!r} is not a finite number")
        return self.check(value)

    def check(self, value: N) -> N:
        """``value`` itself, or OutOfRange naming it and the range."""
        if self.kind is float and not math.isfinite(value):
            raise OutOfRange(f"{value} is not a finite number")
        if not self.low <= value or (self.high is not None and value > self.high):
            raise OutOfRange(f"{_number(value)} is out of range ({self.describe()})")
        return value

    def describe(self) -> str:
        """The range as a reader writes it: ``0-65535``, ``1 or more``."""
        low = _number(self.low)
        return f"{low} or more" if self.high is None else f"{low}-{_number(self.high)}"


@dataclass(frozen=True)
class OneOf:
    """An argparse ``type``: one of ``choices`` (``fold_case``: in any case, given back as typed).

    Unlike argparse's ``choices``, it also checks a value set by code or an environment variable
    (``check``), with the same message, so every way in to an option refuses alike.
    """

    choices: tuple[str, ...]
    fold_case: bool = False

    def __call__(self, text: str) -> str:
        return self.check(text)

    def check(self, value: str) -> str:
        """``value`` itself, or OutOfRange naming it and the choices."""
        if (value.upper() if self.fold_case else value) not in self.choices:
            raise OutOfRange(f"{value!r} is not one of {self.describe()}")
        return value

    def describe(self) -> str:
        return ", ".join(self.choices)


def _number(value: float) -> str:
    """``65535``, ``0.5``, ``31536000``: a bound as a reader writes it (no ``.0``, no exponent)."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def int_in(low: int, high: int | None = None) -> InRange[int]:
    """An argparse type: a whole number from ``low`` to ``high`` (inclusive; None: no top)."""
    return InRange(int, low, high)


def float_in(low: float, high: float | None = None) -> InRange[float]:
    """An argparse type: a finite number from ``low`` to ``high`` (inclusive; None: no top)."""
    return InRange(float, float(low), None if high is None else float(high))


#: The largest value of a protobuf ``uint32`` field (token, step and sweep counts, top-k).
UINT32_MAX = 2**32 - 1
#: The longest duration a flag takes, in seconds: a year. Longer is a typo, and overflows some clocks.
MAX_DURATION_S = 365 * 24 * 3600.0

#: The highest TCP port.
MAX_PORT = 65535
#: A TCP port (0: a free one, where the command picks).
port = int_in(0, MAX_PORT)
#: A count of 1 or more.
positive_int = int_in(1)
#: A count of 0 or more.
non_negative_int = int_in(0)
#: A number of 0 or more.
non_negative_float = float_in(0.0)
#: A fraction, 0 to 1.
fraction = float_in(0.0, 1.0)
#: A duration in seconds, 0 to a year.
seconds = float_in(0.0, MAX_DURATION_S)
#: A random seed (the protocol's ``uint64``).
seed = int_in(0, 2**64 - 1)


def flag_of(dest: str) -> str:
    """The command-line flag of an argparse destination or a settings field: ``max_batch`` → ``--max-batch``."""
    return "--" + dest.replace("_", "-")


def nonempty_path(text: str) -> Path:
    """An argparse type: a file or folder path, refused when empty.

    ``Path("")`` is ``.``, the current folder: an unset shell variable in ``--out "$DIR"`` would
    otherwise write into (or read) wherever the command was started.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text)


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists: where a folder for ``path`` would be made."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder_to_write(out: Path, flag: str = "--out") -> None:
    """Refuses a folder to write (``flag``'s) that is a file or under one, as a usage error before any work."""
    existing = nearest_existing(out)
    if not existing.is_dir():
        where = "" if existing == out else f": {existing}"
        raise CommandError(f"{flag} {out}{where} is a file, not a folder", EXIT_USAGE)


def check_model_folder_to_write(out: Path, flag: str = "--out") -> None:
    """As :func:`check_folder_to_write`, and refuses a folder that holds something other than a model
    (files, but no manifest.json): a model is written into it, or replaces it."""
    from service.contract import holds_something_else  # here: the contract imports numpy, which a command may not need

    check_folder_to_write(out, flag)
    if holds_something_else(out):
        raise CommandError(f"{flag} {out} exists and is not a model folder; refusing to write into it")


def check_file_to_read(path: Path, flag: str) -> None:
    """Refuses a file to read (``flag``'s) that is missing or a folder, as a usage error."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "no such file"
        raise CommandError(f"{flag} {path}: {what}", EXIT_USAGE)


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether ``--debug`` is among the arguments (before a ``--``)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == DEBUG_FLAG:
            return True
    return False


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's final flush of a closed pipe says nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run(action: Callable[[], int], *, debug: bool = False) -> int:
    """Runs a command; a user error becomes one line on stderr and its exit code.

    An exception that is not a user error is a bug: its traceback is printed, with a last line
    saying so.
    """
    try:
        return action()
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE_CLOSED
    except Exception as exc:
        failure = classify(exc)
        if failure is None:
            traceback.print_exc()
            print(error_line(f"internal error: {exc!r}", hint="this is a bug; please report it"), file=sys.stderr)
            return EXIT_INTERNAL
        if debug:
            traceback.print_exc()
        print(failure.line(), file=sys.stderr)
        return failure.exit_code


@dataclass(frozen=True)
class ExitCode:
    """One row of the documented exit codes (docs/api.md is checked against this table)."""

    code: int
    meaning: str


EXIT_CODES = (
    ExitCode(0, "success"),
    ExitCode(EXIT_INTERNAL, "a bug, or a fault the server reports as its own (INTERNAL, UNKNOWN)"),
    ExitCode(EXIT_USAGE, "the command line is wrong: a flag or value, a missing file or folder, a busy port"),
    ExitCode(EXIT_REFUSED, "the server refused the request (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...)"),
    ExitCode(EXIT_UNREACHABLE, "no server answered at --target, or it is not taking requests (UNAVAILABLE)"),
    ExitCode(EXIT_INTERRUPTED, "stopped with Ctrl-C"),
    ExitCode(EXIT_PIPE_CLOSED, "the reader of the output went away (e.g. '| head'); nothing is printed"),
)

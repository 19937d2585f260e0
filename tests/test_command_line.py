"""Help that answers, exit codes as documented, and the pieces of the one error path (in-process, but for one)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest

from service import cli, command
from service.client import registry
from service.tasks import shipped_tasks
from tests.conftest import ROOT

#: Every command's --help, as a user types it: each of ``statestream``'s and each of ``client``'s.
HELP_COMMANDS = [(c.name,) for c in cli.COMMANDS] + [("client", c.name) for c in registry.commands()]
#: An option line of argparse's help: "  --flag VALUE   its help", or the help on the next lines.
OPTION = re.compile(r"^  (-{1,2}[\w-]+(?:[ ,][^ ].*?)?)(?:\s{2,}(\S.*))?$")


def help_of(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*args, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def options_without_help(text: str) -> list[str]:
    """Option lines that have no help text, neither beside them nor on the deeper-indented next line."""
    lines = text.splitlines()
    bare = []
    for index, line in enumerate(lines):
        match = OPTION.match(line)
        if match is None or match.group(2):
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if not re.match(r"^ {8,}\S", following):
            bare.append(line.strip())
    return bare


@pytest.mark.parametrize("args", HELP_COMMANDS, ids=" ".join)
def test_help_names_the_command_and_explains_every_option(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(args, capsys)
    assert text.startswith(f"usage: statestream {' '.join(args)} ")
    assert options_without_help(text) == []
    assert "None" not in text  # an unset default says what it means ("off", "a random one"), not None
    assert "``" not in text and "python -m" not in text  # no raw markup, and the command's own name
    assert "--debug" in text


def test_client_help_lists_the_connection_options(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(("client",), capsys)
    for flag in ("--target", "--token", "--token-file", "--tls", "--tls-ca", "--tls-cert", "--tls-key"):
        assert re.search(rf"^  {flag}\b", text, re.M), flag
    assert "default: 127.0.0.1:50051" in text


def test_client_options_show_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(("client", "generate"), capsys).split())
    assert "characters to generate (default: 200)" in text
    assert "(default: 0.8)" in text and "(default: 0)" in text
    assert "--seed SEED random seed: the same seed gives the same text (default: a random one)" in text


def test_serve_help_shows_defaults_and_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(("serve",), capsys).split())
    assert "(default 50051; env STATESTREAM_PORT)" in text
    assert "(default off; env STATESTREAM_LOG_JSON)" in text
    assert "(env STATESTREAM_TLS_CERT)" in text


def test_the_top_level_help_lists_every_command_and_every_client_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    words = set(re.findall(r"[\w-]+", capsys.readouterr().out))
    assert {c.name for c in cli.COMMANDS} <= words
    assert {c.name for c in registry.commands()} <= words
    assert "--debug" in words


def test_the_client_help_lists_every_client_command(capsys: pytest.CaptureFixture[str]) -> None:
    listed = re.findall(r"^    ([\w-]+) ", help_of(("client",), capsys), re.M)
    assert listed == [c.name for c in registry.commands()]


def test_every_training_command_is_a_statestream_command() -> None:
    training_cli = pytest.importorskip("training.cli")
    assert set(training_cli.COMMANDS) <= {c.name for c in cli.COMMANDS}


def test_every_task_a_driver_serves_has_a_client_command() -> None:
    assert {
        task: registry.commands_serving(task) for task in shipped_tasks() if not registry.commands_serving(task)
    } == {}


@pytest.mark.parametrize("page", ["api.md", "operations.md"])
def test_the_docs_name_every_kind_served(page: str) -> None:
    text = (ROOT / "docs" / page).read_text()
    assert [task for task in shipped_tasks() if f"`{task}`" not in text] == []


def test_the_api_guide_names_the_client_commands_of_each_kind() -> None:
    guide = (ROOT / "docs" / "api.md").read_text()
    for task in shipped_tasks():
        row = re.search(rf"^\| `{task}` \|.*\| ([^|]*) \|$", guide, re.M)
        assert row is not None, f"docs/api.md#kinds has no row for {task}"
        assert set(re.findall(r"`([\w-]+)`", row.group(1))) == set(registry.commands_serving(task)), task


def test_a_client_command_name_is_taken_once() -> None:
    taken = registry.commands()[0]
    with pytest.raises(ValueError, match=f"client command {taken.name!r} is already registered"):
        registry.command(taken.name, "another", taken.add_arguments)(lambda client, args: 0)


def test_every_exit_code_is_documented_in_the_api_guide() -> None:
    guide = (ROOT / "docs" / "api.md").read_text()
    for exit_code in command.EXIT_CODES:
        assert re.search(rf"^\| {exit_code.code} \|", guide, re.M), exit_code


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, command.EXIT_REFUSED),
        (grpc.StatusCode.NOT_FOUND, command.EXIT_REFUSED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, command.EXIT_REFUSED),
        (grpc.StatusCode.UNAUTHENTICATED, command.EXIT_REFUSED),
        (grpc.StatusCode.UNAVAILABLE, command.EXIT_UNREACHABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, command.EXIT_UNREACHABLE),
        (grpc.StatusCode.INTERNAL, command.EXIT_INTERNAL),
    ],
)
def test_a_status_maps_to_its_exit_class(code: grpc.StatusCode, exit_code: int) -> None:
    error = command.rpc_error(code, "what the server said")
    assert error.exit_code == exit_code
    assert error.code == code.name


def test_a_connection_failure_is_one_line_naming_the_target() -> None:
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Failed to connect to remote host: Connection refused"
    )
    line = command.rpc_error(grpc.StatusCode.UNAVAILABLE, details, target="127.0.0.1:1").line()
    assert line.startswith("statestream: error: cannot reach a statestream server at 127.0.0.1:1: connection refused")
    assert "(UNAVAILABLE)" in line and "\n" not in line and "ipv4" not in line


#: What gRPC says when the TLS set-ups disagree (recorded from grpcio against this server).
SOCKET_CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed"
NOT_TLS = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Tls handshake failed "
    "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: "
    "Invalid certificate verification context: OK"
)
UNTRUSTED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Tls handshake failed "
    "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
    "unable to get local issuer certificate: OK"
)


@pytest.mark.parametrize(
    ("details", "tls", "what", "hint"),
    [
        (SOCKET_CLOSED, False, "closed the connection: it expects TLS", "--tls-ca"),
        (SOCKET_CLOSED, True, "it requires a client certificate it trusts", "--tls-cert and --tls-key"),
        (NOT_TLS, True, "failed: it does not speak TLS", "drop --tls"),
        (UNTRUSTED, True, "its certificate is not signed by a CA this client trusts", "--tls-ca"),
    ],
    ids=["plaintext-to-tls", "no-client-certificate", "tls-to-plaintext", "untrusted-ca"],
)
def test_a_tls_mismatch_is_named_as_one(details: str, tls: bool, what: str, hint: str) -> None:
    line = command.rpc_error(grpc.StatusCode.UNAVAILABLE, details, target="127.0.0.1:5", tls=tls).line()
    message, advice = line.split("; ", 1)
    assert message.startswith("statestream: error: the ") and "at 127.0.0.1:5" in message and what in message
    assert "cannot reach" not in line and "is 'statestream serve' running" not in line
    assert hint in advice


def test_run_prints_one_line_for_a_user_error_and_a_traceback_for_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    def refused() -> int:
        raise command.CommandError("no", command.EXIT_REFUSED, code="NOT_FOUND", hint="try another")

    def bug() -> int:
        raise KeyError("oops")

    assert command.run(refused) == command.EXIT_REFUSED
    assert capsys.readouterr().err == "statestream: error: no (NOT_FOUND); try another\n"
    assert command.run(refused, debug=True) == command.EXIT_REFUSED
    assert "Traceback" in capsys.readouterr().err
    assert command.run(bug) == command.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "this is a bug" in err.splitlines()[-1]


def test_debug_is_found_anywhere_before_a_double_dash() -> None:
    assert command.debug_requested(["client", "models", "--debug"])
    assert command.debug_requested(["--debug", "serve"])
    assert not command.debug_requested(["client", "--", "--debug"])
    assert not command.debug_requested(["client", "models"])


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bars_show_on_a_terminal_unless_quiet_or_json() -> None:
    pytest.importorskip("torch")
    from training.cli import show_progress

    assert show_progress(quiet=False, as_json=False, stream=FakeTerminal(True))
    assert not show_progress(quiet=False, as_json=False, stream=FakeTerminal(False))
    assert not show_progress(quiet=True, as_json=False, stream=FakeTerminal(True))
    assert not show_progress(quiet=False, as_json=True, stream=FakeTerminal(True))


@pytest.mark.parametrize("args", [("bench",), ("loadtest",)], ids=" ".join)
def test_a_command_whose_code_a_serving_install_leaves_out_says_so_in_one_line(args: tuple[str, ...]) -> None:
    """The container image holds `service` alone: `bench` there is a usage error, not a traceback."""
    hide = "import sys; sys.modules['loadtest'] = sys.modules['training'] = None; from service.cli import main; "
    done = subprocess.run(
        [sys.executable, "-c", hide + "sys.exit(main(sys.argv[1:]))", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == command.EXIT_USAGE
    assert done.stderr == (
        "statestream: error: this command needs the project's 'loadtest' package, which a serving-only install "
        "leaves out; run it from a source checkout: pip install -e '.[cpu,dev]'\n"
    )


# -- client inputs a user gets wrong: one usage line, before any call (nothing listens at NOWHERE) --

NOWHERE = "127.0.0.1:1"


def client_error(
    capsys: pytest.CaptureFixture[str], *args: str, environ: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """The exit code and the one stderr line of ``statestream client ARGS`` (with only ``environ``'s
    variables, where it is given)."""
    if environ is None:
        code = cli.main(["client", *args])
    else:
        from service.client import commands

        code = command.run(lambda: commands.main(list(args), environ=environ))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("statestream: error: "), lines
    return code, lines[0]


BAD_TARGETS = {
    "127.0.0.1": "--target '127.0.0.1' has no port",
    "127.0.0.1:abc": "--target '127.0.0.1:abc': 'abc' is not a port (1-65535)",
    "127.0.0.1:99999": "--target '127.0.0.1:99999': '99999' is not a port (1-65535)",
    ":50051": "--target ':50051' has no host",
    "a b:50051": "--target 'a b:50051': 'a b' is not a host name",
    "[::1]": "--target '[::1]' has no port",
    "::1:50051": "--target '::1:50051': an IPv6 address goes in brackets; e.g. [::1]:50051",
    "": "--target is empty",
}


@pytest.mark.parametrize("target", list(BAD_TARGETS))
def test_a_target_that_cannot_name_a_server_is_a_usage_error(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Not exit 4 with gRPC's resolver text (or port 443 dialled), as if no server were there."""
    code, line = client_error(capsys, "models", "--target", target)
    assert code == command.EXIT_USAGE
    assert line.startswith(f"statestream: error: {BAD_TARGETS[target]}")


def test_a_target_from_the_environment_is_checked_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    code, line = client_error(capsys, "models", environ={"STATESTREAM_TARGET": "127.0.0.1"})
    assert code == command.EXIT_USAGE
    assert line.startswith("statestream: error: STATESTREAM_TARGET '127.0.0.1' has no port; ")


@pytest.mark.parametrize(
    ("variable", "said"),
    [
        ("STATESTREAM_CLIENT_TLS_CA", "STATESTREAM_CLIENT_TLS_CA /nonexistent/ca.pem: "),
        ("STATESTREAM_TOKEN_FILE", "STATESTREAM_TOKEN_FILE /nonexistent/ca.pem: "),
    ],
)
def test_a_file_from_the_environment_is_refused_naming_the_variable(
    variable: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, line = client_error(capsys, "models", environ={variable: "/nonexistent/ca.pem"})
    assert code == command.EXIT_USAGE
    assert line.startswith(f"statestream: error: {said}"), line


def test_a_file_given_as_a_flag_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"STATESTREAM_CLIENT_TLS_CA": "/also/missing"}  # the flag wins over its variable
    code, line = client_error(capsys, "--tls-ca", "/nonexistent/ca.pem", "models", environ=environ)
    assert code == command.EXIT_USAGE
    assert line.startswith("statestream: error: --tls-ca /nonexistent/ca.pem: "), line


def test_text_that_is_not_utf8_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes of argv that are not UTF-8 arrive as lone surrogates, which protobuf cannot encode."""
    code, line = client_error(capsys, "predict", "--target", NOWHERE, "--model", "m", "--text", "a\udcff")
    assert (code, line) == (command.EXIT_USAGE, "statestream: error: --text is not UTF-8 text: b'a\\xff'")


def test_a_token_grpc_cannot_send_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, line = client_error(capsys, "models", "--target", NOWHERE, "--token", "tökén")
    assert code == command.EXIT_USAGE
    assert line == "statestream: error: the bearer token holds a character outside printable ASCII"
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff\xfe token\n")
    code, line = client_error(capsys, "models", "--target", NOWHERE, "--token-file", str(token_file))
    assert (code, line) == (
        command.EXIT_USAGE,
        f"statestream: error: --token-file {token_file}: not a text file (not UTF-8)",
    )


#: Each drawing flag with the arguments its command needs to get as far as checking it.
DRAWINGS = {
    "caption": ("--attention-png", "--model", "m", "--image", "scene.png"),
    "translate": ("--attention-png", "--model", "m", "--text", "Nov 27, 2026"),
    "complete": ("--png", "--model", "m", "--pattern", "A"),
    "forecast": ("--plot", "--model", "m"),
    "identify": ("--png", "--model", "m", "--index", "0"),
    "vad": ("--png", "--model", "m", "--wav", "call.wav"),
}


@pytest.mark.parametrize("name", list(DRAWINGS))
def test_a_drawing_that_cannot_be_written_is_refused_before_the_command_runs(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It was a traceback after the whole stream had run."""
    flag, *args = DRAWINGS[name]
    for out, says in [
        (tmp_path / "missing" / "x.png", f"there is no folder {tmp_path / 'missing'} to write it in"),
        (tmp_path, "is a folder; give the name of the image to write"),
        (tmp_path / "x.txt", "'.txt' is not an image format it writes; end the name in .png"),
    ]:
        code, line = client_error(capsys, name, "--target", NOWHERE, *args, flag, str(out))
        assert (code, line) == (command.EXIT_USAGE, f"statestream: error: {flag} {out}: {says}")


def test_an_empty_prompt_or_image_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The server answered them with 'no step yet' and 'needs an init payload', exit 3."""
    code, line = client_error(capsys, "generate", "--target", NOWHERE, "--model", "m", "--prompt", "")
    assert code == command.EXIT_USAGE
    assert line == "statestream: error: --prompt is empty: give at least one character to start from"
    empty = tmp_path / "scene.png"
    empty.touch()
    code, line = client_error(capsys, "caption", "--target", NOWHERE, "--model", "m", "--image", str(empty))
    assert (code, line) == (command.EXIT_USAGE, f"statestream: error: --image {empty}: the file is empty")


def test_an_empty_npy_or_wav_file_says_so_in_one_line(tmp_path: Path) -> None:
    from service.client.step import _load
    from service.client.vad import read_wav

    empty = tmp_path / "empty"
    empty.touch()
    with pytest.raises(command.CommandError) as refused:
        _load(empty, "--input")  # numpy's EOFError was a traceback
    assert refused.value.exit_code == command.EXIT_USAGE
    assert refused.value.line() == f"statestream: error: --input {empty}: the file is empty"
    with pytest.raises(command.CommandError) as refused:
        read_wav(empty, 16000)
    assert refused.value.line().startswith(f"statestream: error: --wav {empty} is not a PCM WAV file; convert it")


#: A path argument of each command, given empty: Path("") is ".", the current folder, which the
#: command had read as the folder meant (scenes and export wrote into it).
EMPTY_PATHS = [
    ("scenes", "--out", ""),
    ("check", ""),
    ("import", "", "--spec", "s.toml", "--out", "m"),
    ("eval", "--model", ""),
    ("export", "--checkpoint", "w.pt", "--out", ""),
    ("train", "char_lm", "--recipe", ""),
]


@pytest.mark.parametrize("args", EMPTY_PATHS, ids=" ".join)
def test_an_empty_path_is_a_usage_error(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, as for any bad value
        cli.main(list(args))
    assert exited.value.code == command.EXIT_USAGE
    err = capsys.readouterr().err
    flag = {"check": "FOLDER", "import": "MODEL.onnx"}.get(args[0]) or args[args.index("") - 1]
    assert err == f"statestream: error: {flag}: the path is empty; see 'statestream {args[0]} --help'\n"


def test_train_out_given_empty_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a run written into the current folder."""
    assert cli.main(["train", "char_lm", "--out", ""]) == command.EXIT_USAGE
    assert capsys.readouterr().err == (
        "statestream: error: --out is empty; leave it out to write where the recipe says\n"
    )

"""A client whose TLS set-up does not match the server's is told so, not that no server is running.

Each case runs ``statestream client models`` as a user does against a real server on a loopback
port: the connection is made, so a server is there; the one error line names the mismatch and
what to give, with the "unreachable" exit code (docs/api.md#exit-codes).
"""

from __future__ import annotations

from service.command import EXIT_UNREACHABLE
from tests.servers import ServerThread
from tests.test_security import Pki, cli, mtls_server, pki, tls_server

__all__ = ["mtls_server", "pki", "tls_server"]  # fixtures, shared with the security tests


def assert_one_line(target: str, args: list[str], *expected: str) -> None:
    done = cli("models", "--target", target, *args)
    assert done.returncode == EXIT_UNREACHABLE, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("statestream: error: the ") and f"the server at {target}" in line
    assert "(UNAVAILABLE)" in line
    assert "cannot reach" not in line and "is 'statestream serve' running" not in line
    for text in expected:
        assert text in line


def test_plaintext_to_a_tls_server_says_it_expects_tls(tls_server: ServerThread) -> None:
    assert_one_line(tls_server.target, [], "it expects TLS", "--tls-ca")


def test_mutual_tls_without_a_client_certificate_says_one_is_required(mtls_server: ServerThread, pki: Pki) -> None:
    assert_one_line(mtls_server.target, ["--tls-ca", str(pki.ca)], "requires a client certificate", "--tls-cert")


def test_tls_to_a_plaintext_server_says_it_does_not_speak_tls(server: ServerThread, pki: Pki) -> None:
    assert_one_line(server.target, ["--tls-ca", str(pki.ca)], "does not speak TLS", "drop --tls")


def test_tls_trusting_another_ca_says_the_certificate_is_not_trusted(tls_server: ServerThread, pki: Pki) -> None:
    assert_one_line(tls_server.target, ["--tls-ca", str(pki.rogue_ca)], "not signed by a CA", "--tls-ca")

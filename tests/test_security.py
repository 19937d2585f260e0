"""Security over real gRPC on a loopback port, with real certificates made here.

A CA signs the server's certificate (SAN localhost and 127.0.0.1) and the clients' certificates
(alice, bob); a rogue CA signs a look-alike "alice". Groups: ``-k tls`` (TLS and mutual TLS),
``-k token`` (bearer tokens and session ownership), ``-k ownership``, plus session ids, model
names and pickles.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.auth import load_tokens
from service.client import Client
from service.client.credentials import connection
from service.security import SecurityConfigError, transport_security
from service.session_store import SESSION_ID_BYTES
from service.settings import Settings
from service.tensors import from_proto
from tests.conftest import OfflineLM
from tests.servers import STATESTREAM, ServerThread, serve_process

TOLERANCE = 1e-5  # the float32 contract of test_service_sessions
SECURITY_DOC = Path(__file__).parent.parent / "docs" / "security.md"
ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"


# -- a small PKI -----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path


@dataclass
class Issued:
    cert: Path
    key: Path


def _write(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Issued:
    issued = Issued(folder / f"{stem}.pem", folder / f"{stem}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return issued


def _builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_authority(folder: Path, common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert, _write(folder, common_name, key, cert).cert)


def issue(authority: Authority, folder: Path, stem: str, common_name: str, *, server: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, authority.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _write(folder, stem, key, builder.sign(authority.key, hashes.SHA256()))


@dataclass
class Pki:
    ca: Path
    server: Issued
    alice: Issued
    bob: Issued
    rogue_ca: Path
    rogue_alice: Issued  # CN=alice, but signed by a CA the server does not trust
    tokens: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_authority(folder, "statestream-test-ca")
    rogue = make_authority(folder, "rogue-ca")
    tokens = folder / "tokens.txt"
    tokens.write_text(f"# token caller\n{ALICE_TOKEN} alice\n\n{BOB_TOKEN} bob\n")
    return Pki(
        ca=ca.pem,
        server=issue(ca, folder, "server", "statestream-server", server=True),
        alice=issue(ca, folder, "alice", "alice", server=False),
        bob=issue(ca, folder, "bob", "bob", server=False),
        rogue_ca=rogue.pem,
        rogue_alice=issue(rogue, folder, "rogue-alice", "alice", server=False),
        tokens=tokens,
    )


def start(models: Path, **settings: Any) -> ServerThread:
    return ServerThread(Settings(models_dir=models, max_chunk=256, **settings))


@pytest.fixture(scope="module")
def tls_server(tiny_lm_dir: Path, pki: Pki) -> Iterator[ServerThread]:
    """TLS with bearer tokens: the configuration of a server behind no other gateway."""
    running = start(tiny_lm_dir, tls_cert=pki.server.cert, tls_key=pki.server.key, tokens_file=pki.tokens)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mtls_server(tiny_lm_dir: Path, pki: Pki) -> Iterator[ServerThread]:
    """Mutual TLS, no tokens: the client certificate both admits the caller and names it."""
    running = start(tiny_lm_dir, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca)
    yield running
    running.stop()


def tls_client(target: str, pki: Pki, token: str | None = ALICE_TOKEN, **kwargs: Any) -> Client:
    return Client(target, **connection(tls_ca=pki.ca, token=token, **kwargs))


def mtls_client(target: str, pki: Pki, who: Issued | None, *, ca: Path | None = None) -> Client:
    certs = {"tls_cert": who.cert, "tls_key": who.key} if who is not None else {}
    return Client(target, **connection(tls_ca=ca or pki.ca, **certs))


def logits(result: pb.StepResult) -> np.ndarray:
    return np.stack([from_proto(out.tensors[0]) for out in result.outputs])


def rpc_code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    code = failed.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


# -- TLS -------------------------------------------------------------------------------------


def test_tls_client_trusting_the_ca_streams_the_same_outputs_as_offline(
    tls_server: ServerThread, pki: Pki, offline_lm: OfflineLM
) -> None:
    text = "Once more unto the breach"
    with tls_client(tls_server.target, pki) as client:
        assert [m.name for m in client.list_models()] == ["char_lm"]
        session = client.open("char_lm", return_tensors=["logits"])
        got = np.concatenate([logits(session.step(text=ch)) for ch in text])
        session.close()
    np.testing.assert_allclose(got, offline_lm.logits(text), atol=TOLERANCE, rtol=0)


def test_tls_port_refuses_a_plaintext_client(tls_server: ServerThread) -> None:
    with Client(tls_server.target, metadata=[("authorization", f"Bearer {ALICE_TOKEN}")]) as client:
        assert rpc_code(client.list_models) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_that_does_not_trust_the_servers_ca_fails_the_handshake(tls_server: ServerThread, pki: Pki) -> None:
    with Client(tls_server.target, **connection(tls_ca=pki.rogue_ca, token=ALICE_TOKEN)) as client:
        assert rpc_code(client.list_models) == grpc.StatusCode.UNAVAILABLE


def test_tls_server_name_is_checked_against_the_certificate(tls_server: ServerThread, pki: Pki) -> None:
    port = tls_server.server.port
    with tls_client(f"localhost:{port}", pki) as client:  # the DNS name in the SAN
        assert [m.name for m in client.list_models()] == ["char_lm"]
    with tls_client(tls_server.target, pki, tls_server_name="not-the-server.example") as client:
        assert rpc_code(client.list_models) == grpc.StatusCode.UNAVAILABLE


def test_mtls_client_with_a_certificate_from_the_client_ca_is_served(mtls_server: ServerThread, pki: Pki) -> None:
    with mtls_client(mtls_server.target, pki, pki.alice) as client:
        assert [m.name for m in client.list_models()] == ["char_lm"]


def test_mtls_client_without_a_certificate_fails_the_handshake(mtls_server: ServerThread, pki: Pki) -> None:
    with mtls_client(mtls_server.target, pki, None) as client:
        assert rpc_code(client.list_models) == grpc.StatusCode.UNAVAILABLE


def test_mtls_client_with_a_certificate_from_a_rogue_ca_fails_the_handshake(
    mtls_server: ServerThread, pki: Pki
) -> None:
    with mtls_client(mtls_server.target, pki, pki.rogue_alice) as client:
        assert rpc_code(client.list_models) == grpc.StatusCode.UNAVAILABLE


def test_mtls_client_presenting_a_server_only_certificate_is_refused(mtls_server: ServerThread, pki: Pki) -> None:
    """The server certificate's key usage is serverAuth only: it cannot be used to log in as a client."""
    with mtls_client(mtls_server.target, pki, pki.server) as client:
        assert rpc_code(client.list_models) == grpc.StatusCode.UNAVAILABLE


def test_mtls_ownership_sessions_belong_to_the_client_certificate(mtls_server: ServerThread, pki: Pki) -> None:
    with (
        mtls_client(mtls_server.target, pki, pki.alice) as alice,
        mtls_client(mtls_server.target, pki, pki.bob) as bob,
    ):
        session = alice.open("char_lm")
        session.step(text="a")
        session.session.cancel()  # detach: the session waits for its owner to resume
        assert rpc_code(lambda: bob.attach(session.id)) == grpc.StatusCode.NOT_FOUND
        resumed = alice.attach(session.id)
        assert resumed.session.last_seq == 1
        resumed.close()
    owners = mtls_server.call(_owners(mtls_server))
    assert session.id not in owners  # closed


async def _owners(server: ServerThread) -> dict[str, str]:
    return {s.id: s.owner for s in server.server.store}


@pytest.mark.parametrize(
    ("flag", "content", "message"),
    [
        ("tls_cert", None, "--tls-cert .*cannot read"),
        ("tls_cert", b"not a certificate", "--tls-cert .*not a PEM file"),
        ("tls_key", b"-----BEGIN CERTIFICATE-----\n", "--tls-key .*no 'PRIVATE KEY'"),
        ("tls_client_ca", b"garbage", "--tls-client-ca .*not a PEM file"),
    ],
)
def test_tls_files_that_cannot_be_used_are_refused_at_start_naming_the_flag(
    pki: Pki, tmp_path: Path, flag: str, content: bytes | None, message: str
) -> None:
    bad = tmp_path / "bad.pem"
    if content is not None:
        bad.write_bytes(content)
    files: dict[str, Path] = {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    files[flag] = bad
    with pytest.raises(SecurityConfigError, match=message):
        transport_security(Settings(**files))


def test_tls_warnings_name_tokens_on_a_plaintext_port_and_an_exposed_plaintext_bind(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    from service.security import authenticator, warn_if_exposed

    settings = Settings(host="0.0.0.0", tokens_file=pki.tokens)
    with caplog.at_level("WARNING", logger="service.security"):
        warn_if_exposed(settings, transport_security(settings), authenticator(settings))
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "bearer tokens are checked on a plaintext port" in warned
    assert "without TLS" in warned
    caplog.clear()
    quiet = Settings(host="127.0.0.1", tls_cert=pki.server.cert, tls_key=pki.server.key, tokens_file=pki.tokens)
    with caplog.at_level("WARNING", logger="service.security"):
        warn_if_exposed(quiet, transport_security(quiet), authenticator(quiet))
    assert not caplog.records


def test_tls_serve_with_a_missing_certificate_exits_with_the_reason(tmp_path: Path) -> None:
    done = subprocess.run(
        [*STATESTREAM, "serve", "--port", "0", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", "k.pem"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--tls-cert" in done.stderr and "nope.pem" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def mtls_token_server(tiny_lm_dir: Path, pki: Pki) -> Iterator[ServerThread]:
    running = start(
        tiny_lm_dir,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca,
        tokens_file=pki.tokens,
    )
    yield running
    running.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_")}
    return subprocess.run(
        [*STATESTREAM, "client", *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )


def test_tls_cli_client_connects_with_ca_client_certificate_and_token_flags(
    mtls_token_server: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ALICE_TOKEN + "\n")
    target = mtls_token_server.target
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.alice.cert), "--tls-key", str(pki.alice.key)]
    done = cli("models", "--json", "--target", target, *tls, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)] == ["char_lm"]
    done = cli(
        "predict", "--json", "--target", target, *tls, "--token", ALICE_TOKEN, "--model", "char_lm", "--text", "ab"
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["input"] for line in done.stdout.splitlines()] == ["a", "b"]


def test_tls_cli_client_reads_its_settings_from_the_environment(mtls_token_server: ServerThread, pki: Pki) -> None:
    env = {
        "STATESTREAM_TARGET": mtls_token_server.target,
        "STATESTREAM_CLIENT_TLS_CA": str(pki.ca),
        "STATESTREAM_CLIENT_TLS_CERT": str(pki.bob.cert),
        "STATESTREAM_CLIENT_TLS_KEY": str(pki.bob.key),
        "STATESTREAM_TOKEN": BOB_TOKEN,
    }
    done = cli("models", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)] == ["char_lm"]


def test_tls_cli_client_without_a_token_reports_unauthenticated(mtls_token_server: ServerThread, pki: Pki) -> None:
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.alice.cert), "--tls-key", str(pki.alice.key)]
    done = cli("models", "--target", mtls_token_server.target, *tls)
    assert done.returncode == 3  # refused by the server (docs/api.md#exit-codes)
    assert "UNAUTHENTICATED" in done.stderr and "Traceback" not in done.stderr
    done = cli("models", "--target", mtls_token_server.target, "--tls-ca", str(pki.ca), "--token", ALICE_TOKEN)
    assert done.returncode == 4  # no answer: without a client certificate the handshake fails
    assert "UNAVAILABLE" in done.stderr
    done = cli("models", "--target", mtls_token_server.target, "--tls-cert", str(pki.alice.cert))
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr


# -- bearer tokens ---------------------------------------------------------------------------


@dataclass
class Stubs:
    models: rpc.ModelServiceStub
    sessions: rpc.SessionServiceStub
    health: health_pb2_grpc.HealthStub
    metadata: tuple[tuple[str, str], ...]
    channel: grpc.Channel


@pytest.fixture
def stubs(tls_server: ServerThread, pki: Pki) -> Iterator[Callable[[str | None], Stubs]]:
    """Blocking stubs on the TLS+tokens server, with a given ``authorization`` header (or none)."""
    channels: list[grpc.Channel] = []

    def make(header: str | None) -> Stubs:
        channel = grpc.secure_channel(tls_server.target, grpc.ssl_channel_credentials(pki.ca.read_bytes()))
        channels.append(channel)
        metadata = (("authorization", header),) if header is not None else ()
        return Stubs(
            rpc.ModelServiceStub(channel),
            rpc.SessionServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            metadata,
            channel,
        )

    yield make
    for channel in channels:
        channel.close()


CALLS: dict[str, Callable[[Stubs], object]] = {
    "ListModels": lambda s: s.models.ListModels(pb.ListModelsRequest(), metadata=s.metadata, timeout=10),
    "GetModel": lambda s: s.models.GetModel(pb.GetModelRequest(name="char_lm"), metadata=s.metadata, timeout=10),
    "CreateSession": lambda s: s.sessions.CreateSession(
        pb.OpenSession(model="char_lm"), metadata=s.metadata, timeout=10
    ),
    "CloseSession": lambda s: s.sessions.CloseSession(
        pb.CloseSessionRequest(session_id="x"), metadata=s.metadata, timeout=10
    ),
    "Session": lambda s: list(
        s.sessions.Session(
            iter([pb.SessionRequest(open=pb.OpenSession(model="char_lm"))]), metadata=s.metadata, timeout=10
        )
    ),
    "Multiplex": lambda s: list(
        s.sessions.Multiplex(
            iter([pb.MultiplexRequest(steps=[pb.SessionStep(session_id="x", step=pb.Step(seq=1, text="a"))])]),
            metadata=s.metadata,
            timeout=10,
        )
    ),
}


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", f"Basic {ALICE_TOKEN}", "Bearer wrong-token-0123456789", f"Bearer {ALICE_TOKEN}x"]
)
@pytest.mark.parametrize("method", sorted(CALLS))
def test_token_missing_or_wrong_is_unauthenticated_on_every_rpc(
    stubs: Callable[[str | None], Stubs], method: str, header: str | None
) -> None:
    caller = stubs(header)
    with pytest.raises(grpc.RpcError) as refused:
        CALLS[method](caller)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ALICE_TOKEN not in (refused.value.details() or "")


def test_token_is_accepted_whatever_the_case_of_the_scheme(stubs: Callable[[str | None], Stubs]) -> None:
    caller = stubs(f"bearer {ALICE_TOKEN}")
    assert [m.name for m in CALLS["ListModels"](caller).models] == ["char_lm"]  # type: ignore[attr-defined]


def test_token_is_not_needed_for_the_health_check(stubs: Callable[[str | None], Stubs]) -> None:
    """Load balancers probe health without credentials; it says nothing about sessions or models."""
    reply = stubs(None).health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_token_ownership_another_caller_cannot_attach_and_learns_nothing(
    tls_server: ServerThread, pki: Pki, offline_lm: OfflineLM
) -> None:
    text = "Good night, sweet prince"
    with tls_client(tls_server.target, pki, ALICE_TOKEN) as alice, tls_client(tls_server.target, pki, BOB_TOKEN) as bob:
        session = alice.open("char_lm", return_tensors=["logits"])
        rows = [logits(session.step(text=ch)) for ch in text[:10]]
        session.session.cancel()  # alice's stream drops: the session waits for her to resume
        with pytest.raises(grpc.RpcError) as theirs:
            bob.attach(session.id)
        with pytest.raises(grpc.RpcError) as missing:
            bob.attach("A" * len(session.id))
        assert theirs.value.code() == missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert theirs.value.details() == missing.value.details()
        resumed = alice.attach(session.id)
        rows += [logits(resumed.step(text=ch)) for ch in text[10:]]
        resumed.close()
    np.testing.assert_allclose(np.concatenate(rows), offline_lm.logits(text), atol=TOLERANCE, rtol=0)


def test_token_ownership_another_callers_multiplex_is_not_found_and_changes_nothing(
    stubs: Callable[[str | None], Stubs], offline_lm: OfflineLM
) -> None:
    alice, bob = stubs(f"Bearer {ALICE_TOKEN}"), stubs(f"Bearer {BOB_TOKEN}")
    options = pb.SessionOptions(return_tensors=["logits"])
    opened = alice.sessions.CreateSession(pb.OpenSession(model="char_lm", options=options), metadata=alice.metadata)

    def multiplex(who: Stubs, seq: int, text: str) -> pb.SessionStepResult:
        step = pb.SessionStep(session_id=opened.session_id, step=pb.Step(seq=seq, text=text))
        (reply,) = list(who.sessions.Multiplex(iter([pb.MultiplexRequest(steps=[step])]), metadata=who.metadata))
        (result,) = reply.results
        return result

    first = multiplex(alice, 1, "a")
    for seq in (1, 2, 3):  # bob tries the duplicate, the next seq and a later one: all NOT_FOUND
        stolen = multiplex(bob, seq, "z")
        assert stolen.WhichOneof("outcome") == "error"
        assert stolen.error.code_name == "NOT_FOUND"
    second = multiplex(alice, 2, "b")
    assert second.WhichOneof("outcome") == "result" and not second.result.duplicate
    got = np.concatenate([logits(first.result), logits(second.result)])
    np.testing.assert_allclose(got, offline_lm.logits("ab"), atol=TOLERANCE, rtol=0)
    alice.sessions.CloseSession(pb.CloseSessionRequest(session_id=opened.session_id), metadata=alice.metadata)


def test_token_ownership_another_caller_cannot_close_a_session(stubs: Callable[[str | None], Stubs]) -> None:
    alice, bob = stubs(f"Bearer {ALICE_TOKEN}"), stubs(f"Bearer {BOB_TOKEN}")
    opened = alice.sessions.CreateSession(pb.OpenSession(model="char_lm"), metadata=alice.metadata)
    close = pb.CloseSessionRequest(session_id=opened.session_id)
    with pytest.raises(grpc.RpcError) as theirs:
        bob.sessions.CloseSession(close, metadata=bob.metadata)
    with pytest.raises(grpc.RpcError) as missing:
        bob.sessions.CloseSession(pb.CloseSessionRequest(session_id="B" * 32), metadata=bob.metadata)
    assert theirs.value.code() == grpc.StatusCode.NOT_FOUND
    assert theirs.value.details() == missing.value.details()
    # Still alice's, still open: she can close it, once.
    assert alice.sessions.CloseSession(close, metadata=alice.metadata).last_applied_seq == 0
    with pytest.raises(grpc.RpcError) as again:
        alice.sessions.CloseSession(close, metadata=alice.metadata)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND


def test_token_ownership_a_fork_belongs_to_its_parents_owner(tls_server: ServerThread, pki: Pki) -> None:
    with tls_client(tls_server.target, pki, ALICE_TOKEN) as alice, tls_client(tls_server.target, pki, BOB_TOKEN) as bob:
        session = alice.open("char_lm")
        session.step(text="a")
        reply = session.send_raw(pb.SessionRequest(fork=pb.Fork()))
        assert reply.WhichOneof("response") == "forked"
        child = reply.forked.session_id
        assert rpc_code(lambda: bob.attach(child)) == grpc.StatusCode.NOT_FOUND
        resumed = alice.attach(child)
        assert resumed.session.last_seq == 1
        resumed.close()
        session.close()


def test_token_callers_have_their_own_session_limit(tiny_lm_dir: Path, pki: Pki) -> None:
    """One caller filling its quota (max_sessions_per_caller) leaves the others able to open sessions."""
    running = start(
        tiny_lm_dir, tls_cert=pki.server.cert, tls_key=pki.server.key, tokens_file=pki.tokens, max_sessions_per_caller=2
    )
    try:
        with tls_client(running.target, pki, ALICE_TOKEN) as alice, tls_client(running.target, pki, BOB_TOKEN) as bob:
            held = [alice.open("char_lm"), alice.open("char_lm")]
            with pytest.raises(grpc.RpcError) as full:
                alice.open("char_lm")
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_sessions_per_caller" in (full.value.details() or "")
            bob.open("char_lm").close()
            for session in held:
                session.close()
    finally:
        running.stop()


def test_token_ownership_concurrent_callers_never_see_each_others_sessions(tls_server: ServerThread, pki: Pki) -> None:
    """Alice and bob race: each opens sessions and tries to attach every id the other holds."""
    ids: dict[str, list[str]] = {"alice": [], "bob": []}
    seen: list[tuple[str, grpc.StatusCode]] = []
    barrier = threading.Barrier(2)

    def run(name: str, token: str, other: str) -> None:
        with tls_client(tls_server.target, pki, token) as client:
            for _ in range(5):
                session = client.open("char_lm")
                ids[name].append(session.id)
                session.session.cancel()
            barrier.wait()
            for stolen in ids[other]:
                seen.append((name, rpc_code(lambda s=stolen: client.attach(s))))  # type: ignore[misc]
            for own in ids[name]:
                client.attach(own).close()

    threads = [
        threading.Thread(target=run, args=("alice", ALICE_TOKEN, "bob")),
        threading.Thread(target=run, args=("bob", BOB_TOKEN, "alice")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(seen) == 10
    assert {code for _, code in seen} == {grpc.StatusCode.NOT_FOUND}


def test_token_file_lines_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("short alice\n")
    with pytest.raises(ValueError, match="16\\+ characters"):
        load_tokens(path)
    path.write_text(f"{ALICE_TOKEN} alice\n{ALICE_TOKEN} mallory\n")
    with pytest.raises(ValueError, match="already listed"):
        load_tokens(path)
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no tokens"):
        load_tokens(path)


# -- ids, model names, pickles -----------------------------------------------------------------


def test_session_ids_carry_at_least_128_random_bits(server: ServerThread) -> None:
    channel = grpc.insecure_channel(server.target)
    sessions = rpc.SessionServiceStub(channel)
    ids = [sessions.CreateSession(pb.OpenSession(model="char_lm")).session_id for _ in range(200)]
    for session_id in ids:
        sessions.CloseSession(pb.CloseSessionRequest(session_id=session_id))
    channel.close()
    raw = [base64.urlsafe_b64decode(i + "=" * (-len(i) % 4)) for i in ids]
    assert SESSION_ID_BYTES * 8 >= 128
    assert {len(r) for r in raw} == {SESSION_ID_BYTES}
    assert len(set(ids)) == len(ids)
    bits = np.unpackbits(np.frombuffer(b"".join(raw), dtype=np.uint8)).reshape(len(ids), -1)
    # Every bit position varies across 200 ids (a fixed bit would shrink the id space), and ones
    # make half of all 38,400 bits: the standard deviation of that mean is 0.0026, so 0.02 is > 7σ.
    assert bits.min(axis=0).max() == 0 and bits.max(axis=0).min() == 1
    assert abs(bits.mean() - 0.5) < 0.02


class _FileOpens:
    """Records every file the process opens (the ``open`` audit event) while ``active``."""

    active: list[str] | None = None

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.active is not None and event in ("open", "os.listdir", "os.scandir", "pickle.find_class"):
            cls.active.append(f"{event}:{args[0]!s}")


sys.addaudithook(_FileOpens.hook)


@pytest.mark.parametrize("name", ["../x", "../x/", "..", "x/../../x", "/tmp", "..\\x", "char_lm/../../x", "\x00"])
def test_model_name_with_path_traversal_is_refused_and_nothing_is_read(
    models_dir: Path, name: str, tmp_path: Path
) -> None:
    # A real, loadable model sits right outside the models folder, where "../x" would lead.
    outside = tmp_path / "x"
    outside.mkdir()
    for file in (models_dir / "char_lm").iterdir():
        outside.joinpath(file.name).write_bytes(file.read_bytes())
    manifest = json.loads((outside / "manifest.json").read_text())
    (outside / "manifest.json").write_text(json.dumps({**manifest, "name": "x"}))
    running = start(models_dir)
    try:
        channel = grpc.insecure_channel(running.target)
        sessions, models = rpc.SessionServiceStub(channel), rpc.ModelServiceStub(channel)
        _FileOpens.active = []
        try:
            with pytest.raises(grpc.RpcError) as opened:
                sessions.CreateSession(pb.OpenSession(model=name), timeout=10)
            with pytest.raises(grpc.RpcError) as versioned:
                sessions.CreateSession(pb.OpenSession(model="char_lm", version=name), timeout=10)
            with pytest.raises(grpc.RpcError) as streamed:
                list(sessions.Session(iter([pb.SessionRequest(open=pb.OpenSession(model=name))]), timeout=10))
            with pytest.raises(grpc.RpcError) as described:
                models.GetModel(pb.GetModelRequest(name=name), timeout=10)
            listed = [m.name for m in models.ListModels(pb.ListModelsRequest(), timeout=10).models]
            touched = list(_FileOpens.active)
        finally:
            _FileOpens.active = None
        channel.close()
    finally:
        running.stop()
    for refused in (opened, versioned, streamed, described):
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert "is not loaded" in (refused.value.details() or "")
    assert listed == ["char_lm"]
    assert not [t for t in touched if str(tmp_path) in t], touched  # no model file was opened or listed


class _Canary:
    """Unpickling this runs code: it writes a file. A server that loads pickles would create it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_only_onnx_graphs_are_loaded_never_pickles(models_dir: Path, tmp_path: Path) -> None:
    canary = tmp_path / "pickle-ran"
    payload = pickle.dumps(_Canary(canary))
    for folder, graph in (("pickled", "step.pkl"), ("disguised", "step.onnx"), ("torch_ckpt", "weights.pt")):
        target = models_dir / folder
        target.mkdir()
        manifest = json.loads((models_dir / "char_lm" / "manifest.json").read_text())
        (target / "manifest.json").write_text(json.dumps({**manifest, "name": folder, "step_graph": graph}))
        (target / graph).write_bytes(payload)
    _FileOpens.active = []
    try:
        running = start(models_dir)
        touched = list(_FileOpens.active)
    finally:
        _FileOpens.active = None
    try:
        with Client(running.target) as client:
            assert [m.name for m in client.list_models()] == ["char_lm"]
            for folder in ("pickled", "disguised", "torch_ckpt"):
                assert rpc_code(lambda f=folder: client.open(f)) == grpc.StatusCode.NOT_FOUND  # type: ignore[misc]
    finally:
        running.stop()
    assert not canary.exists()
    assert not [t for t in touched if t.startswith("pickle.find_class")]
    assert not [t for t in touched if t.endswith(("step.pkl", "weights.pt"))]  # refused by name, never opened


# -- the commands of docs/security.md ------------------------------------------------------------


def doc_block(name: str) -> str:
    """The fenced block after ``<!-- tested: NAME -->`` in docs/security.md."""
    match = re.search(rf"<!-- tested: {name} -->\n```\w+\n(.*?)```", SECURITY_DOC.read_text(), re.S)
    assert match, f"docs/security.md has no tested block {name!r}"
    return match.group(1)


def test_tls_docs_commands_make_certificates_serve_and_connect(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """The openssl, serve and client commands of docs/security.md, run as a user would."""
    made = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", doc_block("certificates")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    serve = shlex.split(doc_block("serve"))
    assert serve[:2] == ["statestream", "serve"]
    serve[serve.index("--models-dir") + 1] = str(tiny_lm_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_")}
    with serve_process(serve[2:], env, cwd=tmp_path) as (_, line, _target):
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) \(mutual TLS\)", line)
        assert match, line
        port = match.group(1)
        client = shlex.split(doc_block("client").replace("localhost:50051", f"localhost:{port}"))
        assert client[:2] == ["statestream", "client"]
        done = subprocess.run(
            [*STATESTREAM, *client[1:], "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        assert [row["name"] for row in json.loads(done.stdout)] == ["char_lm"]
        printed = subprocess.run(
            [sys.executable, "-c", doc_block("python").replace("localhost:50051", f"localhost:{port}")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        assert printed.returncode == 0, printed.stderr
        assert 'name: "char_lm"' in printed.stdout
        without_token = subprocess.run(
            [*STATESTREAM, *[a for a in client[1:] if a not in ("--token-file", "alice.token")]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert without_token.returncode == 3 and "UNAUTHENTICATED" in without_token.stderr

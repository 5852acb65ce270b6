"""
Redis over TLS with an ACL user: a ``redis-server`` on a TLS port with a test CA made
here, and the service in this process with ``rediss://alice:pw@localhost:P/0?ssl_ca_certs=``.
The certificate and its host name are verified (service-identity); a wrong one, an
untrusted CA or a wrong password keeps the service from connecting, and the log says
why once.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tangram_channel.bus import RedisURL

from .conftest import RedisServer, free_port
from .e2e import RedisListener, captured_log, mint
from .waiting import eventually
from .wsclient import connect


class Authority:
    """
    A test certificate authority that writes its certificate and the ones it issues as PEM
    files. With ``complete`` (the default) they carry the extensions a real CA's do, which
    strict X.509 verification (Python 3.13's default, the service's) requires; without, they
    are like a hand-made CA that only lax verification accepts.
    """

    def __init__(self, directory: Path, name: str, complete: bool = True) -> None:
        self.directory = directory
        self.complete = complete
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = self._builder(subject, subject, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        if complete:
            builder = builder.add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),
                critical=True,
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        self.certificate = builder.sign(self.key, hashes.SHA256())
        self.path = directory / f"{name}.pem"
        self.path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, name: str, dns: list[str], ips: list[str]) -> tuple[Path, Path]:
        """A server certificate for these names: (certificate file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = self._builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), self.certificate.subject, key.public_key()
        ).add_extension(x509.SubjectAlternativeName(names), critical=False)
        if self.complete:
            builder = (
                builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                  data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                  crl_sign=False, encipher_only=False, decipher_only=False),
                    critical=True,
                )
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
                )
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        )
        return cert_path, key_path


def tls_redis(binary: str, authority: Authority, certificate: tuple[Path, Path]) -> RedisServer:
    """
    A redis-server on a TLS port only, with ACL user alice (password pw), logging each
    connection it accepts (before any TLS handshake) to ``<certificate>.log``: ``attempts``.
    """
    port = free_port()
    cert, key = certificate
    server = RedisServer(binary, port, extra=(
        "--loglevel", "verbose", "--logfile", str(cert.with_suffix(f".{port}.log")),
        # after the plain --port the class passes: the last one counts, so no plain port
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(authority.path),
        "--tls-auth-clients", "no",
        "--user", "alice", "on", ">pw", "~*", "&*", "+@all",
    ))
    server.start()
    return server


def attempts(server: RedisServer) -> int:
    """How many connections ``tls_redis`` server has accepted so far: the service's attempts."""
    log = next(arg for arg in server.extra if arg.endswith(".log"))
    return Path(log).read_text().count(" Accepted ")


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    authority = Authority(tmp_path, "test-ca")
    return {
        "authority": authority,
        "right": authority.issue("redis-right", ["localhost"], ["127.0.0.1"]),
        "wrong": authority.issue("redis-wrong", ["wrong.example"], []),
        "stranger": Authority(tmp_path, "stranger-ca"),
    }


@pytest.fixture
def started_redis():
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.kill()


def rediss_url(server: RedisServer, ca: Path | None, password: str = "pw", query: str = "") -> str:
    """The URL of ``server``, trusting ``ca`` (None: the system's authorities)."""
    trusted = f"ssl_ca_certs={ca}" if ca is not None else ""
    return f"rediss://alice:{password}@localhost:{server.port}/0?{trusted}{query}"


@pytest_twisted.ensureDeferred
async def test_rediss_with_acl_user_joins_broadcasts_and_pushes(start_service, redis_binary, pki, started_redis):
    redis = tls_redis(redis_binary, pki["authority"], pki["right"])
    started_redis.append(redis)
    service = await start_service(redis_url=rediss_url(redis, pki["authority"].path), datetime_interval=0)
    plugin = redis.client(
        ssl=True, ssl_ca_certs=str(pki["authority"].path), username="alice", password="pw"
    )
    listener = RedisListener(plugin)

    client = await connect(service.ws_url)
    reply = await client.reply(client.join("room", (await mint(service.base_url, "room"))["token"]))
    assert reply[4]["status"] == "ok"
    assert plugin.publish("to:room:news", '{"over":"tls"}') == 1
    assert (await client.until(lambda f: f[3] == "news"))[4] == {"over": "tls"}
    ref = client.push("room", "talk", {"n": 1}, join_ref=reply[0])
    assert (await client.reply(ref))[4]["status"] == "ok"
    assert await listener.until(b"from:room:talk") == b'{"n":1}'
    client.close()


REFUSALS = {
    # case: (server certificate, trust root, password, what the one log line says)
    "certificate for another host": ("wrong", "authority", "pw", "localhost"),
    "untrusted CA": ("right", "stranger", "pw", "certificate verify failed"),
    "a private CA, the system's trusted": ("right", None, "pw", "certificate verify failed"),
    "wrong password": ("right", "authority", "nope", "WRONGPASS"),
}


@pytest.mark.parametrize("case", REFUSALS)
@pytest_twisted.ensureDeferred
async def test_rediss_refuses_and_says_why_once(start_service, redis_binary, pki, started_redis, case):
    certificate, trust, password, why = REFUSALS[case]
    redis = tls_redis(redis_binary, pki["authority"], pki[certificate])
    started_redis.append(redis)
    with captured_log() as log:
        service = await start_service(
            redis_url=rediss_url(redis, pki[trust].path if trust else None, password),
            wait_for_redis=False,
            datetime_interval=0,
        )
        await eventually(lambda: attempts(redis) >= 4, what="four connection attempts")
        assert not service.bridge.connected
        await eventually(lambda: [line for line in log if why in line], what=f"a log line saying {why!r}")
        complaints = [line for line in log if why in line]
        assert len(complaints) == 1, complaints


@pytest_twisted.ensureDeferred
async def test_rediss_strict_by_default_says_what_the_certificate_lacks_and_how_to_relax(
    start_service, redis_binary, tmp_path, started_redis
):
    """
    A CA without the extensions strict verification requires (like one made by hand) is
    refused on every Python, as Python 3.13 would, with OpenSSL's reason and the option that
    relaxes the checks, once; with ``ssl_verify_strict=false`` the same certificate serves.
    """
    legacy = Authority(tmp_path, "legacy-ca", complete=False)
    redis = tls_redis(redis_binary, legacy, legacy.issue("redis-legacy", ["localhost"], ["127.0.0.1"]))
    started_redis.append(redis)
    with captured_log() as log:
        service = await start_service(redis_url=rediss_url(redis, legacy.path), wait_for_redis=False,
                                      datetime_interval=0)
        await eventually(lambda: [line for line in log if "ssl_verify_strict=false" in line],
                         what="a log line naming ssl_verify_strict=false")
        tried = attempts(redis)
        await eventually(lambda: attempts(redis) >= tried + 2, what="two more connection attempts")
        complaints = [line for line in log if "ssl_verify_strict=false" in line]
        assert len(complaints) == 1, complaints
        assert "key identifier" in complaints[0].lower(), complaints
        assert not service.bridge.connected
        await service.service.stopService()

    relaxed = await start_service(redis_url=rediss_url(redis, legacy.path, query="&ssl_verify_strict=false"),
                                  wait_for_redis=False, datetime_interval=0)
    await eventually(lambda: relaxed.bridge.connected, timeout=15, what="the relaxed service connected")


def test_ssl_verify_strict_takes_only_true_or_false():
    """A typo in the option is refused at start-up, not read as either."""
    assert RedisURL("rediss://h:1/0").verify_strict is True
    assert RedisURL("rediss://h:1/0?ssl_verify_strict=false").verify_strict is False
    with pytest.raises(ValueError, match="ssl_verify_strict must be true or false"):
        RedisURL("rediss://h:1/0?ssl_verify_strict=no")

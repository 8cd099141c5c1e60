"""Throwaway TLS certificates for the tests that start an embedded server serving TLS.

A CA and a server certificate for 127.0.0.1 and localhost, valid for a few days, made with the ``openssl``
command when it is on PATH, else with the ``cryptography`` package: neither is a dependency of streamq.
Test tooling, not in the wheel: streamq.embedded serves TLS with the certificate files it is given
(``TLSConfig``) and makes none itself.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta

from streamq.embedded import EmbeddedServer, ServerBinary, ServerStartError, TLSConfig


@functools.cache
def supports_tls(binary: ServerBinary) -> bool:
    """Whether ``binary`` can serve TLS, found by starting it once with a throwaway certificate.

    Asking the binary is the only reliable test: a build may lack OpenSSL, or (Valkey 8) carry TLS as a
    module that must be loaded. The answer is cached per binary.
    """
    with tempfile.TemporaryDirectory(prefix="streamq-tls-probe-") as directory:
        try:
            tls = make_self_signed_tls(os.path.join(directory, "tls"))
        except RuntimeError:
            return False  # without a certificate no TLS server can be started anyway
        server = EmbeddedServer(binary, tls=tls, data_dir=os.path.join(directory, "data"))
        try:
            server.start(timeout_s=5.0)
        except ServerStartError:
            return False
        finally:
            server.close()
    return True


def make_self_signed_tls(directory: str, *, days: int = 2) -> TLSConfig:
    """Write a throwaway CA and a server certificate for 127.0.0.1 and localhost into ``directory``.

    Uses the ``openssl`` command when it is on PATH, else the ``cryptography`` package.
    """
    os.makedirs(directory, exist_ok=True)
    config = TLSConfig(
        cert_file=os.path.join(directory, "server.crt"),
        key_file=os.path.join(directory, "server.key"),
        ca_file=os.path.join(directory, "ca.crt"),
    )
    openssl = shutil.which("openssl")
    if openssl is not None:
        _tls_with_openssl(openssl, directory, config, days)
        return config
    try:
        importlib.import_module("cryptography")
    except ImportError:
        raise RuntimeError(
            "making a TLS certificate needs the openssl command on PATH or `pip install cryptography`"
        ) from None
    _tls_with_cryptography(config, days)
    return config


def _tls_with_openssl(openssl: str, directory: str, config: TLSConfig, days: int) -> None:
    ca_key = os.path.join(directory, "ca.key")
    csr = os.path.join(directory, "server.csr")
    extensions = os.path.join(directory, "server.ext")
    with open(extensions, "w", encoding="ascii") as file:
        file.write(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
    # EC keys: generating them takes milliseconds where RSA takes a noticeable fraction of a second.
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", "-new", *new_key, "-keyout", ca_key, "-out", config.ca_file,
         "-days", str(days), "-subj", "/CN=streamq throwaway CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-new", *new_key, "-keyout", config.key_file, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", config.ca_file, "-CAkey", ca_key, "-CAcreateserial",
         "-out", config.cert_file, "-days", str(days), "-extfile", extensions],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed: {done.stderr.strip()}")


def _tls_with_cryptography(config: TLSConfig, days: int) -> None:
    # Reached through importlib so that mypy --strict passes whether or not cryptography is installed.
    x509 = importlib.import_module("cryptography.x509")
    oid = importlib.import_module("cryptography.x509.oid")
    hashes = importlib.import_module("cryptography.hazmat.primitives.hashes")
    ec = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
    serialization = importlib.import_module("cryptography.hazmat.primitives.serialization")

    now = datetime.now(UTC)
    not_before, not_after = now - timedelta(minutes=5), now + timedelta(days=days)

    def subject(common_name: str) -> object:
        return x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, common_name)])

    def key_usage(**granted: bool) -> object:
        usages = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                  "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{usage: granted.get(usage, False) for usage in usages})

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject("streamq throwaway CA"))
        .issuer_name(subject("streamq throwaway CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(subject("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(config.ca_file, "wb") as file:
        file.write(ca_cert.public_bytes(pem))
    with open(config.cert_file, "wb") as file:
        file.write(server_cert.public_bytes(pem))
    with open(config.key_file, "wb") as file:
        file.write(
            server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )

"""Test PKI and a TLS-terminating gRPC proxy (Debian's nginx) in front of the dev server."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "temporal.taskomatic.test"


@dataclass
class Issued:
    cert: Path
    key: Path


class CertificateAuthority:
    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (self._builder(subject, self.key.public_key(), subject)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                                  False, False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 issuer: x509.Name) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, cn: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (self._builder(subject, key.public_key(), self.cert.subject)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.dir / f"{cn}.crt", self.dir / f"{cn}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        issued.key.chmod(0o600)
        return issued


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GrpcTlsProxy:
    """nginx: ``mtls_port`` requires a client certificate from ``client_ca``; ``key_port``
    requires ``Authorization: Bearer <api_key>``; both forward gRPC to ``upstream``."""

    def __init__(self, directory: Path, upstream: str, server: Issued, client_ca: Path,
                 api_key: str) -> None:
        self.dir = directory
        self.mtls_port, self.key_port = free_port(), free_port()
        tls = (f"ssl_certificate {server.cert}; ssl_certificate_key {server.key};"
               " ssl_protocols TLSv1.2 TLSv1.3;")
        proxy = (f"location / {{ grpc_pass grpc://{upstream}; grpc_read_timeout 300s;"
                 " grpc_send_timeout 300s; }")
        (directory / "nginx.conf").write_text(f"""
daemon off; worker_processes 1; user root root; pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {directory}/body;
  server {{
    listen 127.0.0.1:{self.mtls_port} ssl http2; {tls}
    ssl_client_certificate {client_ca}; ssl_verify_client on;
    {proxy}
  }}
  server {{
    listen 127.0.0.1:{self.key_port} ssl http2; {tls}
    if ($http_authorization != "Bearer {api_key}") {{ return 401; }}
    {proxy}
  }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-p", str(directory), "-c", "nginx.conf",
                                      "-e", str(directory / "error.log")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not all(_listening(p) for p in (self.mtls_port, self.key_port)):
            assert self.proc.poll() is None, self.proc.stdout.read() if self.proc.stdout else ""
            assert time.monotonic() < deadline, "nginx did not listen within 20 s"
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True

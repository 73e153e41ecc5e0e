"""Real registries for the image tests, inside the testbed on 127.0.0.1.

Two instances of Debian's `docker-registry` (distribution 2.8) with TLS from
a CA made here:

* "basic": htpasswd Basic auth (bcrypt, as `htpasswd -B` writes it);
* "token": Bearer token auth, tokens from the small issuer in this file
  (`python3 registry.py token-issuer ...`), a JWT (RS256) whose signing
  certificate travels in the `x5c` header and is the registry's trusted
  root. The issuer grants what is asked to USER:PASSWORD, nothing to others.

The testbed has a private network namespace: nothing leaves the machine.
Files live in the testbed's shared dir, at the same path inside and out.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

USER = "tester"
PASSWORD = "s3cret-pass"
BASIC_PORT = 5000
ISSUER_PORT = 5001
TOKEN_PORT = 5002
SERVICE = "podunit-test-registry"
ISSUER = "podunit-test-issuer"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    """CA, a server certificate for 127.0.0.1, and a token signing certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    d = str(directory)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=podunit test CA", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=keyCertSign")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr")  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey",
             f"{d}/ca.key", "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext.cnf",
             "-out", f"{d}/server.crt")  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=podunit token signer", "-keyout", f"{d}/token.key",
             "-out", f"{d}/token.crt")  # fmt: skip


def _config(root: Path, port: int, auth: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 0.1
        log: {{level: info}}
        storage:
          filesystem: {{rootdirectory: {root}/storage-{port}}}
          delete: {{enabled: true}}
        http:
          addr: 127.0.0.1:{port}
          secret: podunit-test-secret
          tls: {{certificate: {root}/pki/server.crt, key: {root}/pki/server.key}}
        auth:
        """
    ) + textwrap.indent(auth, "  ")


@dataclass
class Registries:
    """Both registries, started in the testbed; `certs_dir` is certs.d-shaped."""

    root: Path

    @property
    def basic(self) -> str:
        return f"127.0.0.1:{BASIC_PORT}"

    @property
    def token(self) -> str:
        return f"127.0.0.1:{TOKEN_PORT}"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs.d"

    def storage(self, port: int) -> Path:
        return self.root / f"storage-{port}"

    def skopeo_push(self, testbed: object, src: str, dest: str, *extra: str) -> None:
        """skopeo copy SRC docker://DEST with the test credentials and CA."""
        host = dest.split("/", 1)[0]
        run = testbed.run  # type: ignore[attr-defined]
        run(["skopeo", "copy", "--quiet", *extra, "--dest-creds", f"{USER}:{PASSWORD}",
             "--dest-cert-dir", str(self.certs_dir / host), src, f"docker://{dest}"],
            timeout=300)  # fmt: skip


def start_registries(testbed: object, root: Path) -> Registries:
    """Write configs, PKI and htpasswd under root; start both registries and the issuer."""
    run = testbed.run  # type: ignore[attr-defined]
    make_pki(root / "pki")
    htpasswd = run(["htpasswd", "-Bbn", USER, PASSWORD]).stdout.strip()
    (root / "htpasswd").write_text(htpasswd + "\n")
    basic = _config(root, BASIC_PORT, f"htpasswd: {{realm: podunit-test, path: {root}/htpasswd}}\n")
    token = _config(
        root,
        TOKEN_PORT,
        textwrap.dedent(
            f"""\
            token:
              realm: https://127.0.0.1:{ISSUER_PORT}/token
              service: {SERVICE}
              issuer: {ISSUER}
              rootcertbundle: {root}/pki/token.crt
            """
        ),
    )
    (root / "basic.yml").write_text(basic)
    (root / "token.yml").write_text(token)
    for port in (BASIC_PORT, ISSUER_PORT, TOKEN_PORT):
        certs = root / "certs.d" / f"127.0.0.1:{port}"
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "ca.crt").write_bytes((root / "pki/ca.crt").read_bytes())
    services = {
        f"podunit-test-registry-{BASIC_PORT}": ["docker-registry", "serve", f"{root}/basic.yml"],
        f"podunit-test-registry-{TOKEN_PORT}": ["docker-registry", "serve", f"{root}/token.yml"],
        "podunit-test-token-issuer": [
            sys.executable,
            str(Path(__file__).resolve()),
            "token-issuer",
            str(root / "pki"),
        ],  # fmt: skip
    }
    for unit, argv in services.items():
        run(["systemctl", "reset-failed", unit], check=False)
        run(["systemd-run", f"--unit={unit}", "--quiet", *argv])
    for port in (BASIC_PORT, ISSUER_PORT, TOKEN_PORT):
        wait_port(testbed, port)
    return Registries(root)


def stop_registries(testbed: object) -> None:
    run = testbed.run  # type: ignore[attr-defined]
    for unit in (f"podunit-test-registry-{BASIC_PORT}", f"podunit-test-registry-{TOKEN_PORT}",
                 "podunit-test-token-issuer"):  # fmt: skip
        run(["systemctl", "stop", unit], check=False)


def wait_port(testbed: object, port: int, timeout: float = 20) -> None:
    probe = (
        "import socket,sys,time\n"
        f"end=time.time()+{timeout}\n"
        "while True:\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1',{port}),1).close(); break\n"
        "    except OSError:\n"
        "        if time.time()>end: sys.exit(1)\n"
        "        time.sleep(0.05)\n"
    )
    testbed.run(["python3", "-c", probe], timeout=timeout + 5)  # type: ignore[attr-defined]


# ---- the token issuer (runs inside the testbed) -------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(pki: Path, scopes: list[str], subject: str, lifetime: int = 300) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    cert = x509.load_pem_x509_certificate((pki / "token.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "token.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        access.append({"type": kind, "name": name, "actions": actions.split(",")})
    now = int(time.time())
    header = {
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
    }
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + lifetime,
        "nbf": now - 10,
        "iat": now,
        "jti": _b64(str(time.time_ns()).encode()),
        "access": access,
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def serve_tokens(pki: Path, port: int = ISSUER_PORT) -> None:
    import http.server
    import ssl
    import urllib.parse

    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            authorized = self.headers.get("Authorization") == expected
            if self.headers.get("Authorization") and not authorized:
                self.send_response(401)
                self.end_headers()
                return
            scopes = query.get("scope", []) if authorized else []
            scopes = [s for part in scopes for s in part.split()]
            body = json.dumps(
                {"token": make_token(pki, scopes, USER if authorized else ""), "expires_in": 300}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["token-issuer"]:
        serve_tokens(Path(sys.argv[2]))

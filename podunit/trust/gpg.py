"""GPG "simple signing": verification with gpgv, signing with gpg.

gpgv is on every Debian system and does one thing: check signatures against the keyring it
is given, with no trust database, agent or configuration of its own. We give it a keyring
made only of the policy's keys and read its machine-readable status lines; the verdict is
ours, not its exit code:

* exactly one signature (NEWSIG) in the message,
* GOODSIG and VALIDSIG, the latter naming a primary key of the keyring,
* none of BADSIG, ERRSIG, EXPSIG, EXPKEYSIG, REVKEYSIG (an expired signature prints
  EXPSIG *and* VALIDSIG: VALIDSIG alone is not enough).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podunit.images.signatures import TrustError
from podunit.run import CommandError, run
from podunit.trust.payload import MAX_SIGNATURE_SIZE, SignatureRejected

GPGV_TIMEOUT = 30.0
# gpgv decompresses what it is given: cap what it may write, so that a compressed bomb
# in a signature kills it (SIGXFSZ) instead of filling the disk.
MAX_OUTPUT = 4 << 20
_BAD_STATUSES = {
    "BADSIG": "the signature is corrupt or the signed data was changed (BADSIG)",
    "EXPSIG": "the signature has expired (EXPSIG)",
    "EXPKEYSIG": "the signing key has expired (EXPKEYSIG)",
    "REVKEYSIG": "the signing key has been revoked (REVKEYSIG)",
}


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(data: bytes) -> bytes:
    """Binary OpenPGP data from ASCII armor (any number of blocks); binary passes through.
    gpgv reads only binary keyrings."""
    if b"-----BEGIN PGP" not in data:
        return data
    out = bytearray()
    lines = data.decode("ascii", errors="replace").splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("-----BEGIN PGP"):
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip():  # armor headers, up to a blank line
            i += 1
        body, crc = [], None
        while i < len(lines) and not lines[i].startswith("-----END"):
            line = lines[i].strip()
            if line.startswith("=") and len(line) == 5:
                crc = line[1:]
            elif line:
                body.append(line)
            i += 1
        try:
            block = base64.b64decode("".join(body), validate=True)
            if crc is not None and int.from_bytes(base64.b64decode(crc), "big") != _crc24(block):
                raise ValueError("armor checksum mismatch")
        except (binascii.Error, ValueError) as exc:
            raise TrustError(f"invalid ASCII-armored OpenPGP data: {exc}") from None
        out += block
    return bytes(out)


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each OpenPGP packet (RFC 4880 4.2); keys never use partial lengths."""
    result, pos = [], 0
    while pos < len(data):
        ctb = data[pos]
        if not ctb & 0x80:
            raise TrustError(f"not an OpenPGP key (bad packet header at byte {pos})")
        if ctb & 0x40:  # new format
            tag, first = ctb & 0x3F, data[pos + 1] if pos + 1 < len(data) else 0
            if first < 192:
                length, hdr = first, 2
            elif first < 224:
                length, hdr = ((first - 192) << 8) + data[pos + 2] + 192, 3
            elif first == 255:
                length, hdr = int.from_bytes(data[pos + 2 : pos + 6], "big"), 6
            else:
                raise TrustError("OpenPGP key uses partial body lengths")
        else:
            tag, kind = (ctb >> 2) & 0x0F, ctb & 3
            if kind == 3:
                raise TrustError("OpenPGP key uses an indeterminate length")
            size = (1, 2, 4)[kind]
            length, hdr = int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), 1 + size
        body = data[pos + hdr : pos + hdr + length]
        if len(body) != length:
            raise TrustError("OpenPGP key data is truncated")
        result.append((tag, body))
        pos += hdr + length
    return result


def primary_fingerprints(keyring: bytes) -> list[str]:
    """Fingerprints of the primary public keys (tag 6) in binary OpenPGP data."""
    result = []
    for tag, body in _packets(keyring):
        if tag == 5:
            raise TrustError("a secret key was given where a public key belongs")
        if tag != 6:
            continue
        if not body or body[0] != 4:
            version = body[0] if body else "?"
            raise TrustError(f"OpenPGP v{version} keys are not supported (v4 only, as gpg 2.2)")
        digest = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body, usedforsecurity=False)
        result.append(digest.hexdigest().upper())
    if not result:
        raise TrustError("no OpenPGP public key found")
    return result


class Keyring:
    """A gpgv keyring of exactly the given keys, in a private temporary directory that
    lives as long as this object (built once per verifier, reused per signature)."""

    def __init__(self, keys: Sequence[bytes], names: Sequence[str]) -> None:
        blobs, fingerprints = [], set()
        for key, name in zip(keys, names, strict=True):
            try:
                binary = dearmor(key)
                fingerprints.update(primary_fingerprints(binary))
            except TrustError as exc:
                raise TrustError(f"key {name}: {exc}") from None
            blobs.append(binary)
        self.fingerprints = frozenset(fingerprints)
        self.dir = Path(tempfile.mkdtemp(prefix="podunit-gpgv-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.path = self.dir / "keyring.gpg"
        self.path.write_bytes(b"".join(blobs))

    def close(self) -> None:
        self._cleanup()


@dataclass(frozen=True)
class GpgResult:
    payload: bytes
    fingerprint: str  # primary key


def _status(stdout: bytes) -> list[list[str]]:
    lines = []
    for line in stdout.decode("utf-8", errors="replace").splitlines():
        if line.startswith("[GNUPG:] "):
            lines.append(line[len("[GNUPG:] ") :].split(" "))
    return lines


def judge_status(status: list[list[str]], allowed: frozenset[str]) -> str:
    """The signing primary key's fingerprint if the status lines prove one good signature;
    otherwise SignatureRejected with the reason."""
    kinds = [words[0] for words in status]
    for word, reason in _BAD_STATUSES.items():
        if word in kinds:
            raise SignatureRejected(reason)
    if "ERRSIG" in kinds:
        errsig = status[kinds.index("ERRSIG")]
        # ERRSIG <keyid> <algo> <hash> <class> <time> <rc> <fpr>: the issuer's full
        # fingerprint when the signature carries it, "-" otherwise.
        keyid = errsig[1] if len(errsig) > 1 else "?"
        if len(errsig) > 7 and errsig[7] != "-":
            keyid = errsig[7]
        if "NO_PUBKEY" in kinds:
            raise SignatureRejected(f"signed by key {keyid}, which is not one of the trusted keys")
        raise SignatureRejected(f"the signature by key {keyid} could not be checked (ERRSIG)")
    if kinds.count("NEWSIG") != 1 or kinds.count("GOODSIG") != 1 or kinds.count("VALIDSIG") != 1:
        if "NEWSIG" not in kinds:
            raise SignatureRejected("no OpenPGP signature found (not a signed message)")
        raise SignatureRejected("a signature must contain exactly one good OpenPGP signature")
    validsig = status[kinds.index("VALIDSIG")]
    # VALIDSIG <signing key fpr> <date> <ts> <expires> <ver> <rsvd> <pk algo> <hash> <class>
    # <primary key fpr>; the primary key is what the keyring (and the policy) names.
    primary = validsig[10] if len(validsig) > 10 else validsig[1]
    if primary.upper() not in allowed:
        raise SignatureRejected(f"signed by key {primary}, which is not one of the trusted keys")
    return primary.upper()


def verify(signature: bytes, keyring: Keyring) -> GpgResult:
    """Verify one signature with gpgv; the signed payload, or SignatureRejected."""
    if len(signature) > MAX_SIGNATURE_SIZE:
        raise SignatureRejected(f"larger than {MAX_SIGNATURE_SIZE} bytes")
    token = secrets.token_hex(8)
    sig_path, out_path = keyring.dir / f"sig-{token}", keyring.dir / f"out-{token}"
    sig_path.write_bytes(signature)
    argv = [
        "prlimit", f"--fsize={MAX_OUTPUT}", "--",
        "gpgv", "--homedir", str(keyring.dir), "--keyring", str(keyring.path),
        "--status-fd", "1", "--output", str(out_path), str(sig_path),
    ]  # fmt: skip
    try:
        # stdin empty: a detached signature must not make gpgv wait for data.
        proc = run(argv, check=False, capture=True, input=b"", timeout=GPGV_TIMEOUT)
        if proc.returncode < 0 or proc.returncode > 2:
            raise SignatureRejected(f"gpgv failed ({proc.stderr.decode(errors='replace')})")
        fingerprint = judge_status(_status(proc.stdout), keyring.fingerprints)
        with open(out_path, "rb") as f:
            payload = f.read(MAX_OUTPUT + 1)
    except CommandError as exc:
        raise TrustError(f"cannot verify GPG signatures: {exc}") from None
    except FileNotFoundError:
        raise SignatureRejected("gpgv wrote no signed data") from None
    finally:
        for path in (sig_path, out_path):
            path.unlink(missing_ok=True)
    return GpgResult(payload, fingerprint)


def sign(payload: bytes, key_id: str, gnupghome: str | None = None) -> bytes:
    """An OpenPGP signed message of `payload` made by gpg with `key_id` (binary, like
    skopeo writes). GNUPGHOME comes from the environment unless given."""
    home = gnupghome or os.environ.get("GNUPGHOME")
    env = {"GNUPGHOME": home} if home else {}
    argv = [
        "gpg",
        "--batch",
        "--no-tty",
        "--yes",
        "--sign",
        "--local-user",
        key_id,
        "--output",
        "-",
    ]
    try:
        proc = run(argv, capture=True, input=payload, env=env, timeout=120)
    except CommandError as exc:
        raise TrustError(f"signing with GPG key {key_id} failed: {exc}") from None
    return proc.stdout

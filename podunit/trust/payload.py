"""The "simple signing" payload shared by GPG and cosign signatures, and strict JSON.

    {"critical": {"type": "atomic container signature",
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "identity": {"docker-reference": "registry.example.com/app:1.0"}},
     "optional": {"creator": "...", "timestamp": 1458239713}}

cosign writes the same document with type "cosign container image signature" and may
write `"optional": null`. Critical fields are exactly these: a signer's tool that adds a
critical field means "do not accept this unless you understand it", so we refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from podunit.images.reference import SHA256_RE, ReferenceError
from podunit.trust.identity import DockerName, parse_docker_name

GPG_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"
# Signatures and payloads are small; containers/image uses the same 4 MiB bound.
MAX_SIGNATURE_SIZE = 4 << 20
MAX_SIGNATURES = 64


class SignatureRejected(Exception):
    """One signature does not count; the message says why (collected by the verifier)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Two parsers could pick different values: refuse the ambiguity outright.
            raise ValueError(f'duplicate key "{key}"')
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(data: bytes, what: str, limit: int = MAX_SIGNATURE_SIZE) -> Any:
    """Parse UTF-8 JSON without duplicate keys, NaN or Infinity; ValueError says why."""
    if len(data) > limit:
        raise ValueError(f"{what} is larger than {limit} bytes")
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc.msg} at offset {exc.pos})") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None


@dataclass(frozen=True)
class Payload:
    manifest_digest: str
    identity: DockerName


def _exact_object(value: object, fields: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SignatureRejected(f"{where} is not a JSON object")
    if set(value) != fields:
        unknown = sorted(set(value) - fields)
        missing = sorted(fields - set(value))
        detail = f"unknown field(s) {unknown}" if unknown else f"missing field(s) {missing}"
        raise SignatureRejected(f"{where} has {detail}")
    return value


def _check_optional(value: object, allow_null: bool) -> None:
    if value is None and allow_null:
        return
    if not isinstance(value, dict):
        raise SignatureRejected("payload optional is not a JSON object")
    # Optional fields may be ignored, but when present they must have their types.
    if "creator" in value and not isinstance(value["creator"], str):
        raise SignatureRejected("payload optional.creator is not a string")
    stamp = value.get("timestamp")
    if "timestamp" in value and (not isinstance(stamp, int) or isinstance(stamp, bool)):
        raise SignatureRejected("payload optional.timestamp is not an integer")


def parse_payload(data: bytes, expected_type: str) -> Payload:
    """Check a signed payload's structure; SignatureRejected says what is wrong."""
    try:
        doc = strict_json(data, "signed payload")
    except ValueError as exc:
        raise SignatureRejected(str(exc)) from None
    top = _exact_object(doc, {"critical", "optional"}, "payload")
    critical = _exact_object(top["critical"], {"type", "image", "identity"}, "payload critical")
    if critical["type"] != expected_type:
        raise SignatureRejected(
            f"payload critical.type is {critical['type']!r}, expected {expected_type!r}"
        )
    _check_optional(top["optional"], allow_null=expected_type == COSIGN_TYPE)
    image = _exact_object(critical["image"], {"docker-manifest-digest"}, "payload critical.image")
    digest = image["docker-manifest-digest"]
    if not isinstance(digest, str) or not SHA256_RE.match(digest):
        raise SignatureRejected(f"payload docker-manifest-digest {digest!r} is not a sha256 digest")
    ident = _exact_object(critical["identity"], {"docker-reference"}, "payload critical.identity")
    reference = ident["docker-reference"]
    if not isinstance(reference, str):
        raise SignatureRejected("payload docker-reference is not a string")
    try:
        name = parse_docker_name(reference)
    except ReferenceError as exc:
        raise SignatureRejected(f"payload docker-reference is invalid: {exc}") from None
    return Payload(digest, name)


def make_payload(
    manifest_digest: str, identity: DockerName, kind: str, optional: dict[str, Any] | None
) -> bytes:
    """The payload to sign, compact and with sorted keys like the Go tools write it."""
    doc = {
        "critical": {
            "identity": {"docker-reference": str(identity)},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": kind,
        },
        "optional": optional,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

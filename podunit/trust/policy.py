"""The trust policy: containers-policy.json(5), validated and evaluated.

    {"default": [{"type": "reject"}],
     "transports": {"docker": {"registry.example.com/team": [
         {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/team.gpg"}]}}}

Each transport maps scopes to a list of requirements that must ALL hold; the most specific
scope that matches the image wins, then the transport's "" scope, then "default". Files
people already have (podman's /etc/containers/policy.json) load unchanged; requirement
kinds podunit cannot check (signedBaseLayer, X.509 keys, keyless sigstore) load too, but
refuse every image in their scope with a "not supported" error: failing closed is the only
safe reading of a rule we do not implement.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podunit.images.reference import (
    LOCAL_TRANSPORTS,
    ImageReference,
    ReferenceError,
    parse_registry_name,
)
from podunit.images.signatures import TrustError
from podunit.trust.identity import IDENTITY_TYPES, Identity, canonical_name, is_host
from podunit.trust.payload import strict_json

DEFAULT_POLICY_PATH = Path("/etc/podunit/policy.json")
POLICY_ENV = "PODUNIT_POLICY"
MAX_POLICY_SIZE = 16 << 20
MAX_KEY_SIZE = 4 << 20
# Transports containers/image knows; podunit pulls only from some of them. Rules for the
# others are kept (an imported file stays whole) but never consulted.
KNOWN_TRANSPORTS = frozenset(
    {
        "docker", "oci", "oci-archive", "docker-archive", "dir", "containers-storage",
        "docker-daemon", "atomic", "ostree", "sif", "tarball",
    }
)  # fmt: skip
PODUNIT_TRANSPORTS = ("docker", *LOCAL_TRANSPORTS)
REQUIREMENT_FIELDS = {
    "insecureAcceptAnything": {"type"},
    "reject": {"type"},
    "signedBy": {"type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"},
    "sigstoreSigned": {
        "type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki",
        "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
        "rekorPublicKeyDatas", "signedIdentity",
    },
    "signedBaseLayer": {"type", "baseLayerIdentity"},
}  # fmt: skip
GPG_KEY_TYPES = ("GPGKeys", "signedByGPGKeys", "X509Certificates", "signedByX509CAs")


class PolicyError(TrustError):
    """A policy file is invalid; lists every problem, each located by its JSON path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def json_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    if base and key.replace("-", "").replace("_", "").isalnum():
        return f"{base}.{key}"
    return f"{base}[{json.dumps(key)}]" if base else key


@dataclass(frozen=True)
class KeySource:
    """A key file (keyPath) or inline key (keyData, already base64-decoded)."""

    path: str | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else "keyData"

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_KEY_SIZE + 1)
        except OSError as exc:
            raise TrustError(f"cannot read key {self.path}: {exc.strerror}") from None
        if len(data) > MAX_KEY_SIZE:
            raise TrustError(f"key {self.path} is larger than {MAX_KEY_SIZE} bytes")
        return data


@dataclass(frozen=True)
class Requirement:
    type: str
    where: str  # JSON path in the policy, e.g. transports.docker["docker.io"][0]
    keys: tuple[KeySource, ...] = ()
    identity: Identity = Identity()
    unsupported: str = ""  # why podunit cannot check it; such a requirement refuses

    def describe(self) -> str:
        text = f"{self.where} ({self.type}"
        if self.keys:
            text += ", keys " + ", ".join(k.describe() for k in self.keys)
        if self.type in ("signedBy", "sigstoreSigned"):
            text += f", signedIdentity {self.identity.describe()}"
        return text + ")"


@dataclass
class Policy:
    doc: dict[str, Any]
    source: str
    builtin: bool = False
    default: tuple[Requirement, ...] = ()
    transports: dict[str, dict[str, tuple[Requirement, ...]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def requirements_for(self, ref: ImageReference) -> tuple[str, tuple[Requirement, ...]]:
        """(scope that matched, or "default"; its requirements), most specific first."""
        scopes = self.transports.get(ref.transport, {})
        for scope in scope_candidates(ref):
            if scope in scopes:
                return scope, scopes[scope]
        return "default", self.default


def builtin_policy_doc() -> dict[str, Any]:
    """Local files are the admin's own; registries need signatures or an explicit opening."""
    accept = [{"type": "insecureAcceptAnything"}]
    return {
        "default": [{"type": "reject"}],
        "transports": {t: {"": list(accept)} for t in LOCAL_TRANSPORTS},
    }


def policy_path(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get(POLICY_ENV)
    return Path(env) if env else DEFAULT_POLICY_PATH


def load_policy(path: Path | None = None) -> Policy:
    """The policy in force: the file, or the built-in default when there is none."""
    path = policy_path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_SIZE + 1)
    except FileNotFoundError:
        return parse_policy(builtin_policy_doc(), "built-in default policy", builtin=True)
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        doc = strict_json(data, "the policy", MAX_POLICY_SIZE)
    except ValueError as exc:
        raise PolicyError(str(path), [str(exc)]) from None
    return parse_policy(doc, str(path))


# ---- validation ------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}" if where else message)


def parse_policy(doc: object, source: str, builtin: bool = False) -> Policy:
    """Validate a policy document; PolicyError lists every problem by JSON path."""
    problems = _Problems()
    if not isinstance(doc, dict):
        raise PolicyError(source, ["the policy must be a JSON object"])
    for key in sorted(set(doc) - {"default", "transports"}):
        problems.add(json_path("", key), "unknown field")
    policy = Policy(doc, source, builtin)
    if "default" not in doc:
        problems.add(
            "default",
            'missing: a policy must say what applies by default (e.g. [{"type": "reject"}])',
        )
    else:
        policy.default = _requirements(doc["default"], "default", problems)
    transports = doc.get("transports", {})
    if not isinstance(transports, dict):
        problems.add("transports", "must be an object of transport names")
        transports = {}
    for transport, scopes in transports.items():
        where = json_path("transports", transport)
        if transport not in KNOWN_TRANSPORTS:
            problems.warnings.append(f"{where}: unknown transport, ignored")
        elif transport not in PODUNIT_TRANSPORTS:
            problems.warnings.append(f"{where}: podunit does not pull from {transport}:, ignored")
        if not isinstance(scopes, dict):
            problems.add(where, "must be an object mapping scopes to requirement lists")
            continue
        parsed: dict[str, tuple[Requirement, ...]] = {}
        for scope, reqs in scopes.items():
            scope_where = json_path(where, scope)
            reason = scope_problem(transport, scope) if transport in PODUNIT_TRANSPORTS else ""
            if reason and transport == "docker":
                # containers/image accepts any docker scope; one that is not fully
                # qualified just never matches. Keep such files loadable, but say so.
                problems.warnings.append(f"{scope_where}: {reason} (it never matches)")
            elif reason:
                problems.add(scope_where, reason)
            parsed[scope] = _requirements(reqs, scope_where, problems)
        policy.transports[transport] = parsed
    if problems.errors:
        raise PolicyError(source, problems.errors)
    policy.warnings = problems.warnings
    return policy


def _requirements(value: object, where: str, problems: _Problems) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        problems.add(where, "must be a non-empty list of requirements")
        return ()
    return tuple(_requirement(item, json_path(where, i), problems) for i, item in enumerate(value))


def _requirement(value: object, where: str, problems: _Problems) -> Requirement:
    if not isinstance(value, dict):
        problems.add(where, "must be an object with a type")
        return Requirement("reject", where)
    kind = value.get("type")
    if kind not in REQUIREMENT_FIELDS:
        known = ", ".join(REQUIREMENT_FIELDS)
        problems.add(
            json_path(where, "type"), f"unknown requirement type {kind!r} (known: {known})"
        )
        return Requirement("reject", where)
    assert isinstance(kind, str)
    for key in sorted(set(value) - REQUIREMENT_FIELDS[kind]):
        problems.add(json_path(where, key), f"unknown field for {kind}")
    if kind == "signedBy":
        return _signed_by(value, where, problems)
    if kind == "sigstoreSigned":
        return _sigstore_signed(value, where, problems)
    if kind == "signedBaseLayer":
        reason = "signedBaseLayer is not implemented (containers/image does not either)"
        problems.warnings.append(f"{where}: {reason}; images in this scope are refused")
        return Requirement(kind, where, unsupported=reason)
    return Requirement(kind, where)


def _keys(
    value: dict[str, Any], where: str, names: tuple[str, ...], problems: _Problems
) -> tuple[KeySource, ...]:
    """keyPath / keyPaths / keyData / keyDatas: exactly one of those named."""
    present = [n for n in names if n in value]
    if len(present) != 1:
        choices = "/".join(names)
        problems.add(
            where,
            f"needs exactly one of {choices}" + (f" (has {', '.join(present)})" if present else ""),
        )
        return ()
    name = present[0]
    raw = value[name]
    items = raw if name.endswith("s") else [raw]
    if not isinstance(items, list) or not items:
        problems.add(json_path(where, name), "must be a non-empty list")
        return ()
    keys = []
    for i, item in enumerate(items):
        item_where = json_path(where, name) + (f"[{i}]" if name.endswith("s") else "")
        if not isinstance(item, str) or not item:
            problems.add(item_where, "must be a non-empty string")
        elif name.startswith("keyPath"):
            if not os.path.isabs(item):
                problems.add(item_where, f"{item!r} must be an absolute path")
            keys.append(KeySource(path=item))
        else:
            try:
                keys.append(KeySource(data=base64.b64decode(item, validate=True)))
            except (binascii.Error, ValueError):
                problems.add(item_where, "is not valid base64")
    return tuple(keys)


def _signed_by(value: dict[str, Any], where: str, problems: _Problems) -> Requirement:
    key_type = value.get("keyType")
    if key_type not in GPG_KEY_TYPES:
        problems.add(
            json_path(where, "keyType"),
            f"must be one of {', '.join(GPG_KEY_TYPES)}, not {key_type!r}",
        )
    keys = _keys(value, where, ("keyPath", "keyPaths", "keyData"), problems)
    identity = _identity(value.get("signedIdentity"), json_path(where, "signedIdentity"), problems)
    unsupported = ""
    if key_type in GPG_KEY_TYPES and key_type != "GPGKeys":
        unsupported = f"keyType {key_type} is not implemented (only GPGKeys is)"
        problems.warnings.append(f"{where}: {unsupported}; images in this scope are refused")
    return Requirement("signedBy", where, keys, identity, unsupported)


def _sigstore_signed(value: dict[str, Any], where: str, problems: _Problems) -> Requirement:
    identity = _identity(value.get("signedIdentity"), json_path(where, "signedIdentity"), problems)
    unsupported = ""
    if "fulcio" in value or "pki" in value:
        unsupported = (
            "keyless sigstore verification (Fulcio certificates, Rekor) is not supported; "
            "podunit verifies cosign signatures made with a key: use keyPath or keyData"
        )
    elif any(k.startswith("rekorPublicKey") for k in value):
        unsupported = "Rekor transparency log verification is not supported (keys only)"
    if unsupported:
        problems.warnings.append(f"{where}: {unsupported}; images in this scope are refused")
        return Requirement("sigstoreSigned", where, (), identity, unsupported)
    keys = _keys(value, where, ("keyPath", "keyPaths", "keyData", "keyDatas"), problems)
    return Requirement("sigstoreSigned", where, keys, identity)


def _identity(value: object, where: str, problems: _Problems) -> Identity:
    if value is None:
        return Identity()
    if not isinstance(value, dict) or value.get("type") not in IDENTITY_TYPES:
        got = value.get("type") if isinstance(value, dict) else value
        problems.add(where, f"type must be one of {', '.join(IDENTITY_TYPES)}, not {got!r}")
        return Identity()
    kind = str(value["type"])
    fields = {
        "exactReference": {"type", "dockerReference"},
        "exactRepository": {"type", "dockerRepository"},
        "remapIdentity": {"type", "prefix", "signedPrefix"},
    }.get(kind, {"type"})
    for key in sorted(set(value) - fields):
        problems.add(json_path(where, key), f"unknown field for {kind}")
    for key in sorted(fields - set(value)):
        problems.add(json_path(where, key), f"missing (required by {kind})")
    if kind == "exactReference":
        ref = value.get("dockerReference")
        if isinstance(ref, str) and _is_full_reference(ref):
            return Identity(kind, ref)
        problems.add(
            json_path(where, "dockerReference"),
            f"{ref!r} must be a fully qualified reference with a tag or digest",
        )
    elif kind == "exactRepository":
        repo = value.get("dockerRepository")
        if isinstance(repo, str) and canonical_name(repo) == repo and "/" in repo:
            return Identity(kind, repo)
        problems.add(
            json_path(where, "dockerRepository"),
            f"{repo!r} must be a fully qualified repository name",
        )
    elif kind == "remapIdentity":
        prefix, signed = value.get("prefix"), value.get("signedPrefix")
        for key, text in (("prefix", prefix), ("signedPrefix", signed)):
            if not isinstance(text, str) or not _is_prefix(text):
                problems.add(
                    json_path(where, key),
                    f"{text!r} must be a host[:port], namespace or repository",
                )
        return Identity(kind, prefix=str(prefix), signed_prefix=str(signed))
    return Identity(kind)


def _is_full_reference(text: str) -> bool:
    try:
        ref = parse_registry_name(text)
    except ReferenceError:
        return False
    return text in (
        f"{ref.path}:{ref.tag}",
        f"{ref.path}@{ref.digest}",
        f"{ref.path}:{ref.tag}@{ref.digest}",
    )


def _is_prefix(text: str) -> bool:
    return is_host(text) or canonical_name(text) == text and "/" in text


# ---- scopes --------------------------------------------------------------------------


def scope_problem(transport: str, scope: str) -> str:
    """Why `scope` is not valid for `transport`; "" if it is."""
    if scope == "":
        return ""
    if transport == "docker":
        return _docker_scope_problem(scope)
    path = scope
    colon = scope.rfind(":")
    if colon > scope.rfind("/"):
        path = scope[:colon]
    if not os.path.isabs(path):
        return f'"{scope}" must be an absolute path'
    if path == "/":
        return 'the root directory is not a scope; use "" for the whole transport'
    if os.path.normpath(path) != path:
        return f'"{scope}" must be a normalised path (no trailing "/", "." or "..")'
    return ""


def _docker_scope_problem(scope: str) -> str:
    if scope.startswith("*."):
        if is_host(scope[2:]) and ":" not in scope:
            return ""
        return f'"{scope}": a wildcard scope is "*." and a domain, without port or path'
    if "/" not in scope:
        if not is_host(scope):
            return f'"{scope}" is not a valid registry host[:port]'
        if "." in scope or ":" in scope or scope == "localhost":
            return ""
        # As in Docker's rule: without a dot or port the first component is a repository.
        suggestion = parse_registry_name(scope).path if scope.lower() == scope else "HOST/REPO"
        return f'"{scope}" is not fully qualified; did you mean "{suggestion}"?'
    try:
        ref = parse_registry_name(scope)
    except ReferenceError as exc:
        return str(exc)
    forms = {ref.path, f"{ref.path}:{ref.tag}", f"{ref.path}@{ref.digest}"}
    if scope in forms:
        return ""
    return f'"{scope}" is not fully qualified; did you mean "{ref.path}"?'


def scope_candidates(ref: ImageReference) -> list[str]:
    """Scopes that could apply to `ref`, most specific first, "" last."""
    if ref.transport != "docker":
        return _path_candidates(ref)
    name = ref.path
    result = []
    if ref.digest:
        result.append(f"{name}@{ref.digest}")
    if ref.tag:
        result.append(f"{name}:{ref.tag}")
    parts = name.split("/")
    result += ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    host = parts[0]
    if not host.startswith("["):
        host = host.split(":", 1)[0]
        while "." in host:
            host = host.split(".", 1)[1]
            result.append(f"*.{host}")
    return [*result, ""]


def _path_candidates(ref: ImageReference) -> list[str]:
    path = os.path.realpath(os.path.abspath(ref.path))
    result = [f"{path}:{ref.tag}"] if ref.tag else []
    while path != "/":
        result.append(path)
        path = os.path.dirname(path)
    return [*result, ""]

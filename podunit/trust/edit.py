"""Editing the policy file (`podunit trust set|add-key|remove|import`), like
`podman image trust`: every write is validated first, keys included, and atomic."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

from podunit.images.signatures import TrustError
from podunit.trust.payload import strict_json
from podunit.trust.policy import (
    MAX_POLICY_SIZE,
    Policy,
    PolicyError,
    Requirement,
    builtin_policy_doc,
    parse_policy,
    scope_problem,
)

TYPES = {"accept": "insecureAcceptAnything", "reject": "reject", "signedBy": "signedBy",
         "sigstoreSigned": "sigstoreSigned"}  # fmt: skip


def read_doc(path: Path) -> dict[str, Any]:
    """The policy document to edit: the file's, or the built-in default's."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return builtin_policy_doc()
    try:
        doc = strict_json(data, str(path), MAX_POLICY_SIZE)
    except ValueError as exc:
        raise PolicyError(str(path), [str(exc)]) from None
    parse_policy(doc, str(path))
    assert isinstance(doc, dict)
    return doc


def check_keys(req: Requirement) -> None:
    """Load every key of a requirement the way verification will."""
    from podunit.trust import cosign, gpg

    for key in req.keys:
        data = key.read()
        try:
            if req.type == "signedBy":
                gpg.primary_fingerprints(gpg.dearmor(data))
            else:
                cosign.load_public_key(data, key.describe())
        except TrustError as exc:
            raise TrustError(f"{req.where}: key {key.describe()}: {exc}") from None


def key_kind(path: Path) -> str:
    """signedBy for OpenPGP keys, sigstoreSigned for PEM public keys."""
    head = path.read_bytes()[:4096]
    return "sigstoreSigned" if b"-----BEGIN PUBLIC KEY-----" in head else "signedBy"


def make_requirement(kind: str, keys: list[str], identity: str | None) -> dict[str, Any]:
    req: dict[str, Any] = {"type": TYPES[kind]}
    if kind in ("signedBy", "sigstoreSigned"):
        if not keys:
            raise TrustError(f"--type {kind} needs at least one --pubkeysfile")
        paths = [os.path.abspath(k) for k in keys]
        if kind == "signedBy":
            req["keyType"] = "GPGKeys"
        if len(paths) == 1:
            req["keyPath"] = paths[0]
        else:
            req["keyPaths"] = paths
        if identity:
            req["signedIdentity"] = {"type": identity}
    elif keys:
        raise TrustError(f"--type {kind} takes no keys")
    return req


def check_scope(transport: str, scope: str) -> None:
    if scope == "default":
        return
    if reason := scope_problem(transport, scope):
        raise TrustError(f"{transport} scope {reason}")


def scope_list(doc: dict[str, Any], transport: str, scope: str) -> list[Any] | None:
    if scope == "default":
        return list(doc.get("default", []))
    found = doc.get("transports", {}).get(transport, {}).get(scope)
    return list(found) if found is not None else None


def set_scope(doc: dict[str, Any], transport: str, scope: str, reqs: list[Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if scope == "default":
        doc["default"] = reqs
    else:
        doc.setdefault("transports", {}).setdefault(transport, {})[scope] = reqs
    return doc


def remove_scope(doc: dict[str, Any], transport: str, scope: str) -> dict[str, Any]:
    if scope == "default":
        raise TrustError('the default cannot be removed; use "trust set --type reject default"')
    doc = copy.deepcopy(doc)
    scopes = doc.get("transports", {}).get(transport, {})
    if scope not in scopes:
        raise TrustError(f'the policy has no {transport} scope "{scope}"')
    del scopes[scope]
    if not scopes:
        del doc["transports"][transport]
    return doc


def add_key(doc: dict[str, Any], transport: str, scope: str, key: Path) -> dict[str, Any]:
    """Add a key to the scope's signature requirement of the key's kind (made if missing)."""
    kind = key_kind(key)
    path = os.path.abspath(key)
    reqs = scope_list(doc, transport, scope) or []
    for req in reqs:
        if isinstance(req, dict) and req.get("type") == kind:
            if "keyData" in req or "keyDatas" in req:
                raise TrustError(f"the {kind} requirement of {scope} has inline keyData; edit it")
            paths = list(req.get("keyPaths", [])) + ([req["keyPath"]] if "keyPath" in req else [])
            if path not in paths:
                paths.append(path)
            req.pop("keyPath", None)
            req["keyPaths"] = paths
            return set_scope(doc, transport, scope, reqs)
    # Signatures required from now on: drop an "accept anything" rule, it would be moot.
    reqs = [r for r in reqs if not (isinstance(r, dict) and r.get("type") == TYPES["accept"])]
    reqs.append(make_requirement(kind, [path], None))
    return set_scope(doc, transport, scope, reqs)


def write_policy(path: Path, doc: dict[str, Any], check_all_keys: bool = True) -> Policy:
    """Validate `doc` (and, normally, load its keys), then replace `path` atomically."""
    policy = parse_policy(doc, str(path))
    if check_all_keys:
        reqs = list(policy.default) + [
            r for scopes in policy.transports.values() for rs in scopes.values() for r in rs
        ]
        for req in reqs:
            if req.type in ("signedBy", "sigstoreSigned") and not req.unsupported:
                check_keys(req)
    import json

    data = json.dumps(doc, indent=4).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return policy


def show_rows(policy: Policy) -> list[tuple[str, str, str, str]]:
    """(transport, scope, type, keys and identity) per requirement, default first."""
    rows = []
    entries = [("all", "default", policy.default)] + [
        (t, s or '""', reqs)
        for t, scopes in policy.transports.items()
        for s, reqs in scopes.items()
    ]
    for transport, scope, reqs in entries:
        for req in reqs:
            detail = ", ".join(k.describe() for k in req.keys)
            if req.type in ("signedBy", "sigstoreSigned"):
                detail += f" (signedIdentity {req.identity.describe()})"
            if req.unsupported:
                detail = f"NOT SUPPORTED: {req.unsupported}"
            name = "accept" if req.type == "insecureAcceptAnything" else req.type
            rows.append((transport, scope, name, detail.strip()))
    return rows

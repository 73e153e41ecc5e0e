"""`podunit trust|key|sign`: the trust policy and signatures from the command line.

Imported at every CLI start (see cli.EXTENSIONS), so it imports nothing heavy at module
level: the trust package (and `cryptography`) load only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRANSPORTS = ("docker", "oci", "oci-archive", "docker-archive")


def add_parsers(sub: Any) -> None:
    trust = sub.add_parser("trust", help="show or edit the image trust policy")
    tsub = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    show = tsub.add_parser("show", help="show the policy in force")
    show.add_argument("--json", action="store_true", help="print the policy document")

    tset = tsub.add_parser("set", help="set the requirement of a scope (or of the default)")
    types = ("accept", "reject", "signedBy", "sigstoreSigned")
    tset.add_argument("--type", "-t", required=True, choices=types)
    tset.add_argument(
        "--pubkeysfile", "-f", action="append", default=[], metavar="KEY",
        help="GPG key(s) for signedBy, PEM public key(s) for sigstoreSigned",
    )  # fmt: skip
    identities = ("matchRepoDigestOrExact", "matchRepository", "matchExact")
    tset.add_argument(
        "--signed-identity", choices=identities,
        help="how the signed name must match the image (default matchRepoDigestOrExact)",
    )  # fmt: skip
    for parser in (tset, tsub.add_parser("add-key", help="trust one more key for a scope"),
                   tsub.add_parser("remove", help="remove a scope's entry")):  # fmt: skip
        parser.add_argument("--transport", choices=TRANSPORTS, default="docker")
        parser.add_argument("scope", help='REGISTRY[/REPOSITORY][:TAG], a path, or "default"')
    tsub.choices["add-key"].add_argument("key", type=Path, help="GPG key or PEM public key file")
    imp = tsub.add_parser("import", help="adopt an existing containers policy.json")
    imp.add_argument("file", type=Path)

    key = sub.add_parser("key", help="manage signing keys")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    gen = ksub.add_parser("generate", help="make an ECDSA P-256 key pair for cosign signatures")
    gen.add_argument(
        "--output", "-o", required=True, type=Path, metavar="PREFIX",
        help="write PREFIX.key (private; encrypted with $PODUNIT_KEY_PASSWORD) and PREFIX.pub",
    )  # fmt: skip
    gen.add_argument("--no-password", action="store_true", help="leave the private key unencrypted")

    sign = sub.add_parser(
        "sign", help="sign an image (cosign to the registry, or GPG to a lookaside)"
    )
    how = sign.add_mutually_exclusive_group(required=True)
    how.add_argument("--key", type=Path, metavar="PRIVKEY", help="cosign signature with this key")
    how.add_argument("--gpg", metavar="KEYID", help="GPG simple signature with this key")
    sign.add_argument("--lookaside", type=Path, metavar="DIR", help="where --gpg writes (required)")
    sign.add_argument("--identity", metavar="NAME:TAG", help="the name to sign (default: REF)")
    sign.add_argument("ref", help="the image: docker://NAME[:TAG][@DIGEST], oci:PATH[:TAG], ...")


def _policy_file() -> Path:
    from podunit.trust.policy import policy_path

    return policy_path()


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"podunit: warning: {warning}", file=sys.stderr)


def cmd_trust(args: argparse.Namespace) -> int:
    from podunit.trust import edit
    from podunit.trust.policy import load_policy

    path = _policy_file()
    if args.trust_command == "show":
        policy = load_policy(path)
        if args.json:
            print(json.dumps(policy.doc, indent=4))
            return 0
        origin = f"built-in default ({path} does not exist)" if policy.builtin else str(path)
        print(f"policy: {origin}")
        print(f"{'TRANSPORT':15} {'SCOPE':40} {'TYPE':16} KEYS")
        for row in edit.show_rows(policy):
            print(f"{row[0]:15} {row[1]:40} {row[2]:16} {row[3]}")
        _warn(policy.warnings)
        return 0
    if args.trust_command == "import":
        return _import(args.file, path)
    doc = edit.read_doc(path)
    edit.check_scope(args.transport, args.scope)
    if args.trust_command == "set":
        req = edit.make_requirement(args.type, args.pubkeysfile, args.signed_identity)
        doc = edit.set_scope(doc, args.transport, args.scope, [req])
    elif args.trust_command == "add-key":
        doc = edit.add_key(doc, args.transport, args.scope, args.key)
    else:
        doc = edit.remove_scope(doc, args.transport, args.scope)
    _warn(edit.write_policy(path, doc).warnings)
    return 0


def _import(source: Path, path: Path) -> int:
    from podunit.trust import edit
    from podunit.trust.policy import load_policy

    if not source.is_file():
        from podunit.errors import PodunitError

        raise PodunitError(f"{source}: no such file")
    policy = load_policy(source)  # validates, with messages naming the JSON path
    missing = []
    for scopes in [{"": policy.default}, *policy.transports.values()]:
        for reqs in scopes.values():
            for req in reqs:
                if req.type in ("signedBy", "sigstoreSigned") and not req.unsupported:
                    try:
                        edit.check_keys(req)
                    except Exception as exc:  # reported, not fatal: keys may come later
                        missing.append(str(exc))
    edit.write_policy(path, policy.doc, check_all_keys=False)
    _warn(policy.warnings + [f"{m} (images in that scope will be refused)" for m in missing])
    print(f"imported {source} into {path}")
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    from podunit.trust.cosign import generate_key
    from podunit.trust.signing import key_password

    password = key_password(os.environ.get("PODUNIT_KEY_PASSWORD"), args.no_password)
    private, public = generate_key(args.output, password)
    print(f"private key: {private}\npublic key:  {public}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from podunit.errors import PodunitError
    from podunit.images.reference import ReferenceError, parse_reference
    from podunit.trust import signing

    try:
        ref = parse_reference(args.ref)
    except ReferenceError as exc:
        raise PodunitError(str(exc)) from None
    if args.gpg:
        if args.lookaside is None:
            raise PodunitError("--gpg needs --lookaside DIR (where the signature is written)")
        print(signing.sign_gpg(ref, args.gpg, args.lookaside, args.identity))
        return 0
    if args.lookaside is not None:
        raise PodunitError("--lookaside is for --gpg; cosign signatures go to the registry")
    env = os.environ.get("PODUNIT_KEY_PASSWORD")
    password = env.encode() if env else None
    digest, sig_digest = signing.sign_cosign(ref, args.key, password, args.identity)
    print(f"signed {ref} ({digest}): signature manifest {sig_digest}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "trust": cmd_trust,
    "key": cmd_key,
    "sign": cmd_sign,
}

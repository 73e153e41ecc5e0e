"""Image commands: pull, load, images, rmi, image prune/verify, login, logout.

Imported at every CLI start (cli.EXTENSIONS): only argparse here at module
level; the store and the network code are imported by the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from podunit.errors import PodunitError

if TYPE_CHECKING:
    from podunit.images.progress import Progress
    from podunit.images.store import Image, ImageStore


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pull = sub.add_parser("pull", help="pull an image into the store")
    pull.add_argument("ref", help="docker://HOST/REPO[:TAG][@DIGEST], NAME[:TAG], oci:..., ...")
    pull.add_argument("--quiet", "-q", action="store_true", help="print only the digest")
    pull.add_argument("--json", action="store_true", help="print the result as JSON")

    load = sub.add_parser("load", help="load a docker-archive or oci-archive file")
    load.add_argument("file")
    load.add_argument("--quiet", "-q", action="store_true")

    images = sub.add_parser("images", help="list stored images")
    images.add_argument("--json", action="store_true")

    rmi = sub.add_parser("rmi", help="remove an image (refused while a pod uses it)")
    rmi.add_argument("ref", nargs="+")

    image = sub.add_parser("image", help="image store maintenance")
    isub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    prune = isub.add_parser("prune", help="remove unused blobs and layers")
    prune.add_argument("--all", "-a", action="store_true", help="also images no pod uses")
    verify = isub.add_parser("verify", help="re-hash every blob; report (and --repair) damage")
    verify.add_argument("--repair", action="store_true", help="remove what is damaged")
    verify.add_argument("--json", action="store_true")

    login = sub.add_parser("login", help="store credentials for a registry")
    login.add_argument("registry")
    login.add_argument("--username", "-u")
    login.add_argument("--password-stdin", action="store_true", help="read the password on stdin")

    logout = sub.add_parser("logout", help="remove stored credentials of a registry")
    logout.add_argument("registry")


def _store() -> ImageStore:
    # The trust policy (podunit.trust) provides default_verifier() when it is
    # there; without it images are accepted as pulled (and verified by digest).
    import importlib

    from podunit.images.store import ImageStore
    from podunit.paths import state_dir

    try:
        trust = importlib.import_module("podunit.trust")
    except ImportError:
        trust = None
    factory = getattr(trust, "default_verifier", None)
    return ImageStore(state_dir(), verifier=factory() if callable(factory) else None)


def _progress(quiet: bool, as_json: bool) -> Progress | None:
    from podunit.images.progress import JsonProgress, LineProgress, TerminalProgress

    if quiet:
        return None
    if as_json:
        return JsonProgress()
    return TerminalProgress() if sys.stderr.isatty() else LineProgress()


def _image_json(image: Image) -> dict[str, object]:
    return {
        "ref": image.reference,
        "digest": image.manifest_digest,
        "config_digest": image.config_digest,
        "layers": [str(p) for p in image.layers],
    }


def _parse(text: str) -> object:
    from podunit.images.reference import ReferenceError, parse_reference

    try:
        return parse_reference(text)
    except ReferenceError as exc:
        raise PodunitError(f"{text}: {exc}") from None


def cmd_pull(args: argparse.Namespace) -> int:
    from podunit.images.reference import ImageReference

    ref = _parse(args.ref)
    assert isinstance(ref, ImageReference)
    image = _store().pull(ref, progress=_progress(args.quiet, args.json))
    if args.json:
        print(json.dumps(_image_json(image), indent=2))
    elif args.quiet:
        print(image.manifest_digest)
    else:
        print(f"{image.reference} {image.manifest_digest}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from podunit.images.docker_archive import archive_kind, open_docker_archive
    from podunit.images.maintenance import tag_image
    from podunit.images.reference import ImageReference, ReferenceError, parse_registry_name

    path = os.path.abspath(args.file)
    kind = archive_kind(Path(path))
    store = _store()
    ref = ImageReference(kind, path)
    names: list[str] = []
    if kind == "docker-archive":
        with open_docker_archive(ref) as archive:
            names = archive.repo_tags
    image = store.pull(ref, progress=_progress(args.quiet, False))
    for name in names:
        try:
            tag_image(store, image, parse_registry_name(name))
        except ReferenceError as exc:
            print(f"podunit: ignoring tag {name!r}: {exc}", file=sys.stderr)
            continue
        print(f"Loaded image: {parse_registry_name(name)}")
    if not names:
        print(f"Loaded image: {image.reference}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from podunit.images.maintenance import list_images
    from podunit.images.progress import human_bytes

    images = list_images(_store())
    if args.json:
        print(json.dumps(images, indent=2))
        return 0
    print(f"{'REFERENCE':60} {'DIGEST':19} {'SIZE':>10}  CREATED")
    for img in images:
        digest = str(img["digest"])[:19]
        size = human_bytes(float(str(img["size"] or 0)))
        print(f"{img['ref']!s:60} {digest:19} {size:>10}  {img['created']}")
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    from podunit.images.maintenance import remove_image
    from podunit.images.reference import ImageReference
    from podunit.paths import runtime_dir

    store = _store()
    for text in args.ref:
        ref = _parse(text)
        assert isinstance(ref, ImageReference)
        for item in remove_image(store, ref, runtime_dir()):
            print(f"removed {item}")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from podunit.images.maintenance import prune, verify_store
    from podunit.paths import runtime_dir

    store = _store()
    if args.image_command == "prune":
        for item in prune(store, runtime_dir(), all_unused=args.all):
            print(f"removed {item}")
        return 0
    report = verify_store(store, repair=args.repair)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        print(f"checked {report.checked} blobs")
        for digest in report.corrupt:
            print(f"corrupt blob {digest}")
        for ref in report.incomplete:
            print(f"incomplete image {ref}")
        for item in report.repaired:
            print(item)
    damaged = report.corrupt or report.incomplete
    return 1 if damaged and not args.repair else 0


def cmd_login(args: argparse.Namespace) -> int:
    import getpass

    from podunit.images.auth import Credentials, login_file, store_credentials
    from podunit.images.registry import RegistryClient

    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise PodunitError("login needs a user name and a password")
    creds = Credentials(username, password)
    client = RegistryClient(args.registry, credentials=creds)
    client.check_login()
    path = login_file()
    store_credentials(args.registry, creds, path)
    print(f"Login Succeeded (credentials in {path})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from podunit.images.auth import login_file, remove_credentials

    path = login_file()
    if not remove_credentials(args.registry, path):
        raise PodunitError(f"not logged in to {args.registry} (no entry in {path})")
    print(f"Removed login credentials for {args.registry}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pull": cmd_pull,
    "load": cmd_load,
    "images": cmd_images,
    "rmi": cmd_rmi,
    "image": cmd_image,
    "login": cmd_login,
    "logout": cmd_logout,
}

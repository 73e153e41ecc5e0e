"""Registry configuration: containers-registries.conf(5), version 2.

Read in this order, later files overriding earlier ones (a `[[registry]]`
with the same prefix replaces the earlier table, as containers/image merges
drop-ins):

    /etc/containers/registries.conf       ($CONTAINERS_REGISTRIES_CONF)
    /etc/containers/registries.conf.d/*.conf   (alphanumeric order; the
                                           main file's path + ".d")
    /etc/podunit/registries.conf          ($PODUNIT_REGISTRIES_CONF)

podunit's own file may instead use the older line format, `insecure
HOST[:PORT]...` per line (`#` comments); a file that is not valid TOML is
read that way. `$PODUNIT_INSECURE_REGISTRIES` adds insecure hosts.

Of the TOML we use `[[registry]]` (`prefix`, `location`, `insecure`,
`blocked`, `mirror-by-digest-only`) and `[[registry.mirror]]` (`location`,
`insecure`, `pull-from-mirror`). Short-name resolution
(`unqualified-search-registries`, `[aliases]`, `short-name-mode`) is not
used: a bare name is normalised to docker.io as Docker does, so that a pod
manifest means the same image on every host whatever its search list.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podunit.errors import ImageError

log = logging.getLogger(__name__)

CONTAINERS_CONF = Path("/etc/containers/registries.conf")
PODUNIT_CONF = Path("/etc/podunit/registries.conf")
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


class BlockedRegistryError(ImageError):
    """The reference matches a registry the configuration blocks."""


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"

    def serves(self, by_digest: bool) -> bool:
        if self.pull_from_mirror == "digest-only":
            return by_digest
        if self.pull_from_mirror == "tag-only":
            return not by_digest
        return True


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()
    source: str = ""  # the file it came from, for messages


@dataclass(frozen=True)
class Endpoint:
    """Where to try a pull: HOST[:PORT] and the repository path there."""

    host: str
    repository: str
    insecure: bool
    mirror: bool

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}"


@dataclass
class RegistriesConf:
    entries: dict[str, RegistryEntry] = field(default_factory=dict)  # by prefix
    insecure_hosts: set[str] = field(default_factory=set)  # line format and env

    def insecure(self) -> frozenset[str]:
        """Every HOST[:PORT] marked insecure anywhere (primary or mirror)."""
        hosts = set(self.insecure_hosts)
        for entry in self.entries.values():
            if entry.insecure and not _is_wildcard(entry.prefix):
                hosts.add(_host(entry.location))
            hosts.update(_host(m.location) for m in entry.mirrors if m.insecure)
        return frozenset(hosts)

    def match(self, name: str) -> tuple[RegistryEntry, str] | None:
        """The entry whose prefix matches `name` (DOMAIN/REPO) longest, and
        the part of `name` the prefix covered."""
        best: tuple[RegistryEntry, str] | None = None
        for entry in self.entries.values():
            covered = _prefix_match(entry.prefix, name)
            if covered is not None and (best is None or len(entry.prefix) > len(best[0].prefix)):
                best = (entry, covered)
        return best

    def endpoints(self, domain: str, repository: str, by_digest: bool) -> list[Endpoint]:
        """Mirrors that apply, in order, then the primary location.

        BlockedRegistryError for a blocked registry.
        """
        name = f"{domain}/{repository}"
        found = self.match(name)
        if found is None:
            return [Endpoint(domain, repository, domain in self.insecure_hosts, mirror=False)]
        entry, covered = found
        if entry.blocked:
            where = f" (in {entry.source})" if entry.source else ""
            raise BlockedRegistryError(
                f"{name}: registry {entry.prefix} is blocked by the registry configuration{where}"
            )
        rest = name[len(covered) :]
        result = [
            _endpoint(m.location + rest, m.insecure, mirror=True)
            for m in entry.mirrors
            if m.serves(by_digest)
        ]
        location = covered if _is_wildcard(entry.prefix) else entry.location
        insecure = entry.insecure or _host(location) in self.insecure_hosts
        result.append(_endpoint(location + rest, insecure, mirror=False))
        return result


def _host(location: str) -> str:
    return location.split("/", 1)[0]


def _endpoint(name: str, insecure: bool, mirror: bool) -> Endpoint:
    host, _, repository = name.partition("/")
    return Endpoint(host, repository, insecure, mirror)


def _is_wildcard(prefix: str) -> bool:
    return prefix.startswith("*.")


def _prefix_match(prefix: str, name: str) -> str | None:
    """The leading part of `name` that `prefix` matches, or None.

    `example.com/ns` matches `example.com/ns` and `example.com/ns/app`, not
    `example.com/nsx`; `*.example.com` matches any subdomain's host part.
    """
    if _is_wildcard(prefix):
        host = _host(name).split(":", 1)[0]
        return _host(name) if host.endswith(prefix[1:]) else None
    if name == prefix or name.startswith(prefix + "/"):
        return prefix
    return None


# ---- parsing ----------------------------------------------------------------------------


def _bool(table: Mapping[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise ImageError(f"{where}: {key} must be true or false")
    return value


def _location(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ImageError(f"{where}: location must be a string")
    value = value.removeprefix("https://").removeprefix("http://").rstrip("/")
    if not value or value.startswith("/") or " " in value:
        raise ImageError(f"{where}: invalid location {value!r}")
    return value


def _mirror(table: object, where: str, digest_only: bool) -> Mirror:
    if not isinstance(table, dict):
        raise ImageError(f"{where}: a mirror must be a table")
    default = "digest-only" if digest_only else "all"
    mode = table.get("pull-from-mirror") or default
    if mode not in PULL_FROM_MIRROR:
        raise ImageError(
            f"{where}: pull-from-mirror must be one of {', '.join(PULL_FROM_MIRROR)}, not {mode!r}"
        )
    return Mirror(
        _location(table.get("location"), where), _bool(table, "insecure", where), str(mode)
    )


def _entry(table: object, where: str) -> RegistryEntry:
    if not isinstance(table, dict):
        raise ImageError(f"{where}: [[registry]] must be a table")
    raw_location = table.get("location")
    prefix = table.get("prefix") or raw_location
    if not isinstance(prefix, str) or not prefix:
        raise ImageError(f"{where}: a [[registry]] needs a prefix or a location")
    prefix = prefix.removeprefix("https://").removeprefix("http://").rstrip("/")
    location = prefix if raw_location is None or _is_wildcard(prefix) else raw_location
    if _is_wildcard(location):
        location = prefix  # never contacted as such: the matched host is
    else:
        location = _location(location, where)
    digest_only = _bool(table, "mirror-by-digest-only", where)
    mirrors = table.get("mirror", [])
    if not isinstance(mirrors, list):
        raise ImageError(f"{where}: [[registry.mirror]] must be an array of tables")
    return RegistryEntry(
        prefix,
        location,
        _bool(table, "insecure", where),
        _bool(table, "blocked", where),
        tuple(_mirror(m, f"{where}: mirror of {prefix}", digest_only) for m in mirrors),
        where,
    )


def _merge_toml(conf: RegistriesConf, doc: dict[str, Any], where: str) -> None:
    registries = doc.get("registry", [])
    if not isinstance(registries, list):
        raise ImageError(f"{where}: [[registry]] must be an array of tables")
    for table in registries:
        entry = _entry(table, where)
        conf.entries[entry.prefix] = entry
    legacy = doc.get("registries")
    if isinstance(legacy, dict):
        log.warning("%s: version 1 [registries.*] tables are ignored; use [[registry]]", where)


def _merge_lines(conf: RegistriesConf, text: str) -> None:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "insecure":
            conf.insecure_hosts.update(words[1:])


def _merge_file(conf: RegistriesConf, path: Path, *, lines_ok: bool) -> None:
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: cannot read: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        if not lines_ok:
            raise ImageError(f"{path}: not valid TOML: {exc}") from None
        _merge_lines(conf, text)
        return
    _merge_toml(conf, doc, str(path))


def parse_registries_conf(text: str, where: str = "<text>") -> RegistriesConf:
    """One TOML document on its own (tests, tools)."""
    conf = RegistriesConf()
    try:
        _merge_toml(conf, tomllib.loads(text), where)
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"{where}: not valid TOML: {exc}") from None
    return conf


def _dropins(directory: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [directory / n for n in names if n.endswith(".conf") and (directory / n).is_file()]


def load_registries_conf(environ: Mapping[str, str] | None = None) -> RegistriesConf:
    """The merged configuration (see the module docstring for the files)."""
    env = os.environ if environ is None else environ
    conf = RegistriesConf()
    main = Path(env.get("CONTAINERS_REGISTRIES_CONF") or CONTAINERS_CONF)
    _merge_file(conf, main, lines_ok=False)
    for path in _dropins(Path(str(main) + ".d")):
        _merge_file(conf, path, lines_ok=False)
    own = Path(env.get("PODUNIT_REGISTRIES_CONF") or PODUNIT_CONF)
    _merge_file(conf, own, lines_ok=True)
    conf.insecure_hosts.update(env.get("PODUNIT_INSECURE_REGISTRIES", "").replace(",", " ").split())
    return conf

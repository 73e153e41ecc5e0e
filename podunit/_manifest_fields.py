"""The machinery under podunit.manifest: a walker over YAML nodes that keeps
line numbers and field paths, and the name rules Kubernetes applies.

Checks never raise: each records a FieldError and returns None, so one pass
over a manifest reports every problem in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from podunit.errors import FieldError
from podunit.quantity import QuantityError, parse_quantity

# A yaml.Node; PyYAML ships no type hints, so there is nothing better to name.
Node = Any
Check = Callable[[str], str | None]

_YAML = "tag:yaml.org,2002:"
STR = _YAML + "str"
INT = _YAML + "int"
FLOAT = _YAML + "float"
BOOL = _YAML + "bool"
NULL = _YAML + "null"
MAP = _YAML + "map"
SEQ = _YAML + "seq"
MERGE = _YAML + "merge"
_KINDS = {
    STR: "a string",
    INT: "an integer",
    FLOAT: "a number",
    BOOL: "a boolean",
    NULL: "null",
    MAP: "a mapping",
    SEQ: "a list",
    _YAML + "timestamp": "a timestamp",
    _YAML + "binary": "binary data",
    _YAML + "set": "a set",
    _YAML + "omap": "an ordered mapping",
    _YAML + "pairs": "a list of pairs",
}
_DECIMAL_RE = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")

UNKNOWN = "unknown field"
UNSUPPORTED = "unsupported field (podunit does not support it yet)"
REQUIRED = "required field is missing"


class TooComplex(Exception):
    """Aliases expand the document beyond what any real pod needs."""


@dataclass(frozen=True)
class Schema:
    """The keys a mapping may have; `other` replaces "unknown field" when set."""

    known: frozenset[str]
    unsupported: Mapping[str, str] = field(default_factory=dict)
    other: str | None = None


def schema(known: str, unsupported: str = "", *, message: str = UNSUPPORTED) -> Schema:
    """A Schema from space-separated key lists, for readable tables."""
    return Schema(frozenset(known.split()), dict.fromkeys(unsupported.split(), message))


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(node: Node) -> str:
    return _KINDS.get(node.tag, f"a value tagged {node.tag}")


class Walker:
    """Collects FieldErrors for one manifest file while its nodes are read."""

    def __init__(self, source: str, budget: int = 1_000_000) -> None:
        self.source = source
        self.errors: list[FieldError] = []
        # Aliases let a small file name the same subtree again and again; the
        # budget bounds the nodes visited so such a file cannot stall us.
        self._budget = budget

    def error(self, line: int, path: str, message: str) -> None:
        self.errors.append(FieldError(self.source, line, path, message))

    def error_at(self, node: Node, path: str, message: str) -> None:
        self.error(line_of(node), path, message)

    def _spend(self, count: int) -> None:
        self._budget -= count
        if self._budget < 0:
            raise TooComplex

    def _is(self, node: Node, path: str, tag: str) -> bool:
        if node.tag == tag:
            return True
        self._wrong(node, path, _KINDS[tag])
        return False

    def _wrong(self, node: Node, path: str, expected: str) -> None:
        if not node.tag.startswith(_YAML):
            self.error_at(node, path, f'unsupported YAML tag "{node.tag}"')
            return
        message = f"expected {expected}, got {describe(node)}"
        if expected == _KINDS[STR] and node.id == "scalar" and node.tag != NULL:
            # `no`, `on`, `1.10` are not strings in YAML; say how to make them so.
            message += f'; quote "{node.value}" to make it a string'
        self.error_at(node, path, message)

    def mapping(self, node: Node, path: str, keys: Schema | None) -> Fields:
        """The entries of a mapping node; keys outside `keys` are errors.

        `keys=None` accepts any string key (labels, annotations).
        """
        if not self._is(node, path, MAP):
            return Fields(self, path, line_of(node), {}, present=False)
        entries = self._entries(node, path, frozenset())
        rejected: set[str] = set()
        if keys is not None:
            for name, (key, _) in list(entries.items()):
                if name not in keys.known:
                    message = keys.unsupported.get(name, keys.other or UNKNOWN)
                    self.error_at(key, join(path, name), message)
                    rejected.add(name)
                    del entries[name]
        return Fields(self, path, line_of(node), entries, present=True, rejected=rejected)

    def _entries(self, node: Node, path: str, seen: frozenset[int]) -> dict[str, tuple[Node, Node]]:
        self._spend(len(node.value))
        entries: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if key.tag == MERGE:
                # `<<: *defaults` as go-yaml understands it: explicit keys win,
                # then earlier merged mappings win over later ones.
                sources = value.value if value.tag == SEQ else [value]
                for source in sources:
                    if source.tag != MAP:
                        self.error_at(source, path, "<< needs a mapping or a list of mappings")
                    elif id(source) not in seen:
                        found = self._entries(source, path, seen | {id(node)})
                        for name, pair in found.items():
                            merged.setdefault(name, pair)
                continue
            if not self._is(key, join(path, str(key.value)) if key.id == "scalar" else path, STR):
                continue
            if key.value in entries:
                first = line_of(entries[key.value][0])
                self.error_at(key, join(path, key.value), f"duplicate key (first at line {first})")
                continue
            entries[key.value] = (key, value)
        for name, pair in merged.items():
            entries.setdefault(name, pair)
        return entries

    def sequence(self, node: Node, path: str) -> list[tuple[str, Node]]:
        """(path, node) of each item of a list node."""
        if not self._is(node, path, SEQ):
            return []
        self._spend(len(node.value))
        return [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]

    def string(self, node: Node, path: str, check: Check | None = None) -> str | None:
        if not self._is(node, path, STR):
            return None
        value: str = node.value
        problem = "must not contain a NUL character" if "\0" in value else None
        if problem is None and check is not None:
            problem = check(value)
        if problem is not None:
            self.error_at(node, path, problem)
            return None
        return value

    def strings(self, node: Node, path: str) -> tuple[str, ...] | None:
        values = [self.string(item, item_path) for item_path, item in self.sequence(node, path)]
        if node.tag != SEQ or None in values:
            return None
        return tuple(v for v in values if v is not None)

    def boolean(self, node: Node, path: str) -> bool | None:
        if not self._is(node, path, BOOL):
            return None
        word: str = node.value.lower()
        if word not in ("true", "false"):
            # YAML 1.1 reads yes/no/on/off as booleans; Kubernetes' JSON does not.
            self.error_at(node, path, f'expected a boolean (true or false), got "{node.value}"')
            return None
        return word == "true"

    def integer(self, node: Node, path: str, low: int, high: int) -> int | None:
        if not self._is(node, path, INT):
            return None
        if not _DECIMAL_RE.fullmatch(node.value):
            # 0755 and 0x1F are octal and hex to YAML 1.1: too easy to misread.
            self.error_at(node, path, f'expected a decimal integer, got "{node.value}"')
            return None
        value = int(node.value)
        if not low <= value <= high:
            self.error_at(node, path, f"must be between {low} and {high}, not {value}")
            return None
        return value

    def quantity(self, node: Node, path: str) -> Fraction | None:
        """A resource quantity; YAML numbers count, as they do for Kubernetes."""
        if node.tag not in (STR, INT, FLOAT):
            self._wrong(node, path, "a quantity (such as 512Mi or 0.5)")
            return None
        try:
            return parse_quantity(node.value)
        except QuantityError as exc:
            self.error_at(node, path, str(exc))
            return None

    def choice(self, node: Node, path: str, choices: Collection[str]) -> str | None:
        value = self.string(node, path)
        if value is not None and value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            self.error_at(node, path, f'"{value}" is not one of {allowed}')
            return None
        return value


class Fields:
    """The entries of one mapping, with one call per field and its checks.

    Absent keys and explicit nulls read as "not set", as in Kubernetes' JSON.
    """

    def __init__(
        self,
        walker: Walker,
        path: str,
        line: int,
        entries: dict[str, tuple[Node, Node]],
        *,
        present: bool,
        rejected: Collection[str] = (),
    ) -> None:
        self.walker = walker
        self.path = path
        self.line = line
        self.entries = entries
        self.present = present  # False when absent or not a mapping at all
        self.rejected = frozenset(rejected)  # keys already reported as unknown or unsupported

    def at(self, key: str) -> str:
        return join(self.path, key)

    def get(self, key: str) -> Node | None:
        pair = self.entries.get(key)
        if pair is None or pair[1].tag == NULL:
            return None
        return pair[1]

    def line_of(self, key: str) -> int:
        node = self.get(key)
        return self.line if node is None else line_of(node)

    def error(self, key: str, message: str) -> None:
        """An error about a field's value, or about the mapping if it is absent."""
        self.walker.error(self.line_of(key), self.at(key), message)

    def require(self, key: str) -> Node | None:
        node = self.get(key)
        if node is None and self.present:
            self.walker.error(self.line, self.at(key), REQUIRED)
        return node

    def string(self, key: str, check: Check | None = None, *, required: bool = False) -> str | None:
        node = self.require(key) if required else self.get(key)
        return None if node is None else self.walker.string(node, self.at(key), check)

    def strings(self, key: str) -> tuple[str, ...] | None:
        node = self.get(key)
        return None if node is None else self.walker.strings(node, self.at(key))

    def boolean(self, key: str) -> bool | None:
        node = self.get(key)
        return None if node is None else self.walker.boolean(node, self.at(key))

    def integer(self, key: str, low: int, high: int, *, required: bool = False) -> int | None:
        node = self.require(key) if required else self.get(key)
        return None if node is None else self.walker.integer(node, self.at(key), low, high)

    def choice(self, key: str, choices: Collection[str]) -> str | None:
        node = self.get(key)
        return None if node is None else self.walker.choice(node, self.at(key), choices)

    def quantity(self, key: str) -> Fraction | None:
        node = self.get(key)
        return None if node is None else self.walker.quantity(node, self.at(key))

    def mapping(self, key: str, keys: Schema | None) -> Fields:
        node = self.get(key)
        if node is None:
            return Fields(self.walker, self.at(key), self.line, {}, present=False)
        return self.walker.mapping(node, self.at(key), keys)

    def sequence(self, key: str) -> list[tuple[str, Node]]:
        node = self.get(key)
        return [] if node is None else self.walker.sequence(node, self.at(key))


# Name rules of k8s.io/apimachinery/pkg/util/validation, as messages.

_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ENV_NAME_RE = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_SVC_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_LABEL_RULE = (
    "at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
)
_SUBDOMAIN_RULE = (
    "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
)
_QUALIFIED_RULE = (
    "an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' and '.',"
    " starting and ending with a letter or digit"
)


def _shown(value: str) -> str:
    return f'"{value}"' if len(value) <= 70 else f'"{value[:60]}..." ({len(value)} characters)'


def dns_label(value: str) -> str | None:
    if len(value) <= 63 and _LABEL_RE.fullmatch(value):
        return None
    return f"{_shown(value)} is not a valid DNS-1123 label: {_LABEL_RULE}"


def dns_subdomain(value: str) -> str | None:
    if len(value) <= 253 and _SUBDOMAIN_RE.fullmatch(value):
        return None
    return f"{_shown(value)} is not a valid DNS-1123 subdomain: {_SUBDOMAIN_RULE}"


def pod_name(value: str) -> str | None:
    problem = dns_subdomain(value)
    if problem is None and len(value) > 63:
        return (
            f"{_shown(value)} is longer than 63 characters: podunit needs pod names"
            " to fit a hostname and a systemd unit name"
        )
    return problem


def qualified_name(value: str) -> str | None:
    """A label or annotation key: [prefix/]name."""
    prefix, slash, name = value.rpartition("/")
    ok = len(name) <= 63 and _QUALIFIED_RE.fullmatch(name) is not None
    if slash and dns_subdomain(prefix) is not None:
        ok = False
    return None if ok else f"{_shown(value)} is not a valid key: {_QUALIFIED_RULE}"


def label_value(value: str) -> str | None:
    if value == "" or (len(value) <= 63 and _QUALIFIED_RE.fullmatch(value)):
        return None
    return (
        f"{_shown(value)} is not a valid label value: empty, or at most 63 letters, digits,"
        " '-', '_' and '.', starting and ending with a letter or digit"
    )


def env_name(value: str) -> str | None:
    if _ENV_NAME_RE.fullmatch(value):
        return None
    return (
        f"{_shown(value)} is not a valid environment variable name: letters, digits,"
        " '_', '-' and '.', not starting with a digit"
    )


def port_name(value: str) -> str | None:
    """IANA_SVC_NAME, as Kubernetes checks container port names."""
    ok = (
        len(value) <= 15
        and _SVC_NAME_RE.fullmatch(value) is not None
        and "--" not in value
        and any("a" <= c <= "z" for c in value)
    )
    if ok:
        return None
    return (
        f"{_shown(value)} is not a valid port name: at most 15 lowercase letters, digits"
        " and '-', with a letter, no '--', not starting or ending with '-'"
    )


def absolute_path(value: str) -> str | None:
    return None if value.startswith("/") else f"{_shown(value)} is not an absolute path"


# Linux capabilities in the kernel's numbering (include/uapi/linux/capability.h).
CAPABILITIES = tuple(
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP"
    " LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER"
    " SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE"
    " SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP"
    " MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF"
    " CHECKPOINT_RESTORE".split()
)
_CAPABILITY_SET = frozenset(CAPABILITIES)


def capability(value: str) -> tuple[str | None, str | None]:
    """(normalised name, problem): "cap_net_admin" -> "NET_ADMIN"."""
    name = value.upper()
    name = name.removeprefix("CAP_")
    if name == "ALL" or name in _CAPABILITY_SET:
        return name, None
    return None, f"{_shown(value)} is not a Linux capability name"

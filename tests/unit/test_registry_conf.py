"""containers-registries.conf(5) v2 and podunit's older line format: prefixes,
mirrors, insecure and blocked registries, file precedence."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from podunit.errors import ImageError  # noqa: E402
from podunit.images.http import insecure_registries  # noqa: E402
from podunit.images.reference import parse_reference  # noqa: E402
from podunit.images.registries_conf import (  # noqa: E402
    BlockedRegistryError,
    Endpoint,
    load_registries_conf,
    parse_registries_conf,
)
from podunit.images.registry import RegistrySource  # noqa: E402

CONF = """
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "mirror.example:5000/hub"
insecure = true
[[registry.mirror]]
location = "pinned.example"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "example.com/team"
location = "internal.example/team-copy"

[[registry]]
prefix = "example.com/team/secret"
blocked = true

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "cache.corp.example"

[aliases]
"bb" = "docker.io/library/busybox"
"""


def hosts(endpoints: list[Endpoint]) -> list[str]:
    return [str(e) for e in endpoints]


def test_mirrors_in_order_then_primary_by_tag_and_digest() -> None:
    conf = parse_registries_conf(CONF)
    by_tag = conf.endpoints("docker.io", "library/busybox", by_digest=False)
    assert hosts(by_tag) == ["mirror.example:5000/hub/library/busybox", "docker.io/library/busybox"]
    assert [(e.insecure, e.mirror) for e in by_tag] == [(True, True), (False, False)]
    by_digest = conf.endpoints("docker.io", "library/busybox", by_digest=True)
    assert hosts(by_digest)[1] == "pinned.example/library/busybox"
    assert "mirror.example:5000" in conf.insecure()


def test_longest_prefix_wins_and_location_rewrites() -> None:
    conf = parse_registries_conf(CONF)
    assert hosts(conf.endpoints("example.com", "team/app", False)) == [
        "internal.example/team-copy/app"
    ]
    # "team" must match whole components: "teamx" is another namespace.
    assert hosts(conf.endpoints("example.com", "teamx/app", False)) == ["example.com/teamx/app"]
    with pytest.raises(BlockedRegistryError, match="example.com/team/secret is blocked"):
        conf.endpoints("example.com", "team/secret/db", False)


def test_wildcard_prefix_keeps_the_matched_host() -> None:
    conf = parse_registries_conf(CONF)
    assert hosts(conf.endpoints("a.corp.example:8443", "x/y", False)) == [
        "cache.corp.example/x/y",
        "a.corp.example:8443/x/y",
    ]
    assert hosts(conf.endpoints("corp.example", "x", False)) == ["corp.example/x"]


def test_invalid_values_are_refused_clearly() -> None:
    with pytest.raises(ImageError, match="pull-from-mirror must be one of"):
        parse_registries_conf('[[registry]]\nlocation="a"\n[[registry.mirror]]\n'
                              'location="b"\npull-from-mirror="sometimes"\n')  # fmt: skip
    with pytest.raises(ImageError, match="insecure must be true or false"):
        parse_registries_conf('[[registry]]\nlocation="a"\ninsecure="yes"\n')
    with pytest.raises(ImageError, match="needs a prefix or a location"):
        parse_registries_conf("[[registry]]\nblocked=true\n")


def test_file_precedence_dropins_and_line_format(tmp_path: Path) -> None:
    main = tmp_path / "registries.conf"
    main.write_text('[[registry]]\nprefix="r.example"\nlocation="old.example"\n')
    dropins = tmp_path / "registries.conf.d"
    dropins.mkdir()
    (dropins / "10-new.conf").write_text(
        '[[registry]]\nprefix="r.example"\nlocation="new.example"\n'
    )
    (dropins / "ignored.txt").write_text("not toml [[")
    own = tmp_path / "podunit.conf"
    own.write_text("insecure 10.0.0.1:5000  # the older podunit format\n")
    env = {"CONTAINERS_REGISTRIES_CONF": str(main), "PODUNIT_REGISTRIES_CONF": str(own),
           "PODUNIT_INSECURE_REGISTRIES": "a:1"}  # fmt: skip
    conf = load_registries_conf(env)
    assert hosts(conf.endpoints("r.example", "app", False)) == ["new.example/app"]
    assert insecure_registries(env) == {"10.0.0.1:5000", "a:1"}
    # podunit's own file, in TOML, overrides the system's tables.
    own.write_text('[[registry]]\nprefix="r.example"\nblocked=true\n')
    with pytest.raises(BlockedRegistryError):
        load_registries_conf(env).endpoints("r.example", "app", False)
    (dropins / "20-bad.conf").write_text("[[registry]\n")
    with pytest.raises(ImageError, match="20-bad.conf: not valid TOML"):
        load_registries_conf(env)


def test_registry_source_refuses_blocked_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "podunit.conf"
    own.write_text('[[registry]]\nlocation="blocked.example"\nblocked=true\n')
    monkeypatch.setenv("PODUNIT_REGISTRIES_CONF", str(own))
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "none.conf"))
    with pytest.raises(BlockedRegistryError, match="blocked.example/app: registry blocked"):
        RegistrySource(parse_reference("blocked.example/app:v1"))

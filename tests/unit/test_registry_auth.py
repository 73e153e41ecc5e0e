"""Challenge parsing, credential lookup, login/logout files, Retry-After, insecure config."""

from __future__ import annotations

import base64
import json
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from podunit.images.auth import (  # noqa: E402
    AuthError,
    Credentials,
    auth_files,
    find_credentials,
    normalize_key,
    parse_www_authenticate,
    remove_credentials,
    store_credentials,
)
from podunit.images.http import insecure_registries, parse_retry_after  # noqa: E402


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_parse_bearer_challenge_with_quoted_commas() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }


def test_parse_several_challenges_escapes_and_tokens() -> None:
    got = parse_www_authenticate('Basic realm="a \\"q\\" b", Bearer realm=x , service=y')
    assert [c.scheme for c in got] == ["basic", "bearer"]
    assert got[0].params["realm"] == 'a "q" b'
    assert got[1].params == {"realm": "x", "service": "y"}
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate("Basic")[0].params == {}


def test_auth_file_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"REGISTRY_AUTH_FILE": "/a.json", "XDG_RUNTIME_DIR": "/run/user/5", "HOME": "/h"}
    files = [str(p) for p in auth_files(env)]
    assert files[0] == "/a.json" and files[1] == "/run/user/5/containers/auth.json"
    assert files[-2:] == ["/h/.config/containers/auth.json", "/h/.docker/config.json"]
    assert any(f.startswith("/run/containers/") for f in files)


def test_credentials_lookup_specific_key_first_then_docker(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config/containers").mkdir(parents=True)
    (home / ".docker").mkdir()
    (home / ".config/containers/auth.json").write_text(json.dumps({"auths": {
        "reg.example": {"auth": b64("host:h")},
        "reg.example/team/app": {"auth": b64("repo:r")},
    }}))  # fmt: skip
    (home / ".docker/config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:pw:with:colons")},
        "other.example": {"username": "u", "password": "p"},
    }}))  # fmt: skip
    env = {"HOME": str(home)}
    assert find_credentials("reg.example", "team/app", env) == Credentials("repo", "r")
    assert find_credentials("reg.example", "team/other", env) == Credentials("host", "h")
    assert find_credentials("docker.io", "library/busybox", env) == Credentials(
        "hub", "pw:with:colons"
    )
    assert find_credentials("other.example", None, env) == Credentials("u", "p")
    assert find_credentials("none.example", None, env) is None
    (home / ".docker/config.json").write_text('{"auths": {"bad.example": {"auth": "!!"}}}')
    with pytest.raises(AuthError, match="not base64"):
        find_credentials("bad.example", None, env)


def test_normalize_key() -> None:
    assert normalize_key("https://index.docker.io/v1/") == "docker.io"
    assert normalize_key("http://reg:5000/v2/") == "reg:5000"
    assert normalize_key("reg:5000/ns/") == "reg:5000/ns"


def test_login_logout_write_private_file(tmp_path: Path) -> None:
    path = tmp_path / "dir/auth.json"
    store_credentials("reg:5000", Credentials("me", "pw"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert find_credentials("reg:5000", None, {"REGISTRY_AUTH_FILE": str(path)}) == Credentials(
        "me", "pw"
    )
    store_credentials("other", Credentials("x", "y"), path)
    assert remove_credentials("reg:5000", path)
    assert not remove_credentials("reg:5000", path)
    assert list(json.loads(path.read_text())["auths"]) == ["other"]


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


def test_insecure_registries_from_env_and_conf(tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text("# comment\ninsecure 10.0.0.1:5000  # lab\nsomething else\n")
    env = {"PODUNIT_INSECURE_REGISTRIES": "a:1, b", "PODUNIT_REGISTRIES_CONF": str(conf)}
    assert insecure_registries(env) == {"a:1", "b", "10.0.0.1:5000"}


HELPER = """#!/bin/sh
# A fake docker-credential helper: logs what it was asked, answers by server URL.
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "$(dirname "$0")/asked"
case "$server" in
  helped.example) echo '{"ServerURL":"helped.example","Username":"hu","Secret":"hs"}' ;;
  https://index.docker.io/v1/) echo '{"Username":"hub","Secret":"hubpw"}' ;;
  token.example) echo '{"Username":"<token>","Secret":"refresh"}' ;;
  broken.example) echo 'keychain locked' >&2; exit 3 ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
"""


def test_credential_helpers_per_registry_and_default_store(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker-credential-fake", "docker-credential-store"):
        (bin_dir / name).write_text(HELPER)
        (bin_dir / name).chmod(0o755)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker/config.json").write_text(json.dumps({
        "credHelpers": {"helped.example": "fake", "token.example": "fake",
                        "broken.example": "fake", "gone.example": "missing"},
        "credsStore": "store",
        "auths": {"plain.example": {"auth": b64("p:q")}, "https://index.docker.io/v1/": {}},
    }))  # fmt: skip
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    assert find_credentials("helped.example", "a/b", env) == Credentials("hu", "hs")
    # auths before the default store; Hub's placeholder falls through to the store.
    assert find_credentials("plain.example", None, env) == Credentials("p", "q")
    assert find_credentials("docker.io", "library/x", env) == Credentials("hub", "hubpw")
    assert find_credentials("unknown.example", None, env) is None
    assert find_credentials("gone.example", None, env) is None  # not installed: a warning
    with pytest.raises(AuthError, match="identity token"):
        find_credentials("token.example", None, env)
    with pytest.raises(AuthError, match="docker-credential-fake failed.*keychain locked"):
        find_credentials("broken.example", None, env)
    asked = (bin_dir / "asked").read_text().split()
    assert asked[:3] == ["helped.example", "https://index.docker.io/v1/", "unknown.example"]

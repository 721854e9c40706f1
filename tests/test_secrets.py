"""Store references: placeholders resolved only when the store opens, passwords kept out."""

from __future__ import annotations

import pytest

from matloop.config import ConfigError, parse_config
from matloop.secrets import (
    SecretError,
    check_placeholders,
    hide_literal_password,
    literal_password,
    resolve,
)
from matloop.store import MatloopStore, StoreURIError

PASSWORD = "hunter2-Xy9"


def test_resolve_env_and_default(monkeypatch):
    monkeypatch.setenv("MATLOOP_T_PW", PASSWORD)
    monkeypatch.delenv("MATLOOP_T_UNSET", raising=False)
    assert resolve("mongodb://u:${MATLOOP_T_PW}@h/db") == f"mongodb://u:{PASSWORD}@h/db"
    assert resolve("mongodb://u:${env:MATLOOP_T_PW}@h/db") == f"mongodb://u:{PASSWORD}@h/db"
    assert resolve("${MATLOOP_T_UNSET:-monty://./s}") == "monty://./s"
    assert resolve("${MATLOOP_T_PW:-x}") == PASSWORD
    assert resolve("monty://./plain") == "monty://./plain"


def test_unset_variable_is_named_and_no_value_leaks(monkeypatch):
    monkeypatch.delenv("MATLOOP_T_UNSET", raising=False)
    with pytest.raises(SecretError, match="MATLOOP_T_UNSET is not set"):
        resolve("${MATLOOP_T_UNSET}")
    with pytest.raises(StoreURIError, match="MATLOOP_T_UNSET"):
        MatloopStore("${MATLOOP_T_UNSET}")


@pytest.mark.parametrize("bad", ["${1abc}", "${foo:bar}", "${env:}", "${a-b}"])
def test_bad_placeholders_are_config_errors(bad):
    with pytest.raises(SecretError):
        check_placeholders(bad)
    with pytest.raises(ConfigError, match="store"):
        parse_config({"name": "x", "chemical_space": {"elements": ["Na"]}, "store": bad})


def test_config_keeps_the_reference(monkeypatch):
    monkeypatch.setenv("MATLOOP_STORE_URI", f"mongodb://u:{PASSWORD}@h:27017/db")
    config = parse_config({
        "name": "x", "chemical_space": {"elements": ["Na"]}, "store": "${MATLOOP_STORE_URI}",
    })
    assert config.store == "${MATLOOP_STORE_URI}"
    assert PASSWORD not in config.model_dump_json()
    store = MatloopStore(config.store)  # opens nothing until used
    assert store.backend.database == "db"
    assert PASSWORD not in repr(store) and PASSWORD not in repr(store.backend)
    with pytest.raises(ConfigError, match="scheme"):
        parse_config({"name": "x", "chemical_space": {"elements": ["Na"]}, "store": "ftp://x"})


def test_monty_path_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MATLOOP_T_DIR", str(tmp_path))
    store = MatloopStore("monty://${MATLOOP_T_DIR}/store")
    assert store.backend.path == tmp_path / "store"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://u:p@h/db", True),
        ("mongodb+srv://u:p@h/db?x=1", True),
        ("mongodb://u:${PW}@h/db", False),
        ("mongodb://u@h/db", False),
        ("mongodb://h:27017/db", False),
        ("${MATLOOP_STORE_URI}", False),
        ("monty://./store", False),
        ("memory://", False),
    ],
)
def test_literal_password(uri, expected):
    assert literal_password(uri) is expected


def test_hide_literal_password(monkeypatch):
    monkeypatch.delenv("MATLOOP_STORE_URI", raising=False)
    uri = f"mongodb://u:{PASSWORD}@h/db"
    reference = hide_literal_password(uri)
    assert reference == "${MATLOOP_STORE_URI}"
    assert resolve(reference) == uri
    assert hide_literal_password("monty://./s") == "monty://./s"


def test_prefect_secret_needs_the_flows_resolver():
    import matloop.flows  # noqa: F401  registers ${prefect-secret:…}
    from matloop.secrets import _RESOLVERS

    assert "prefect-secret" in _RESOLVERS
    check_placeholders("${prefect-secret:matloop-store-uri}")

"""Secrets in store URIs: placeholders in the configuration, values only in memory.

A campaign file never holds a database password. Its ``store`` is a *reference* that may
contain placeholders, resolved only at the moment the store is opened:

``${NAME}`` or ``${env:NAME}``
    the environment variable ``NAME`` (e.g. set by docker-compose, SLURM or a ``.env`` file
    outside the repository); ``${NAME:-DEFAULT}`` falls back to ``DEFAULT`` when unset;
``${prefect-secret:BLOCK}``
    the value of the Prefect ``Secret`` block ``BLOCK`` (``prefect block create secret``),
    available once :mod:`matloop.flows` is imported (flows and the CLI register it).

Examples: ``store: ${MATLOOP_STORE_URI}`` (the whole URI from the environment) or
``store: mongodb://matloop:${MATLOOP_DB_PASSWORD}@db.example.org:27017/matloop``.

The reference, never the resolved value, is what travels in flow parameters, flow-run names,
logs and artifacts, so the Prefect UI shows ``${MATLOOP_DB_PASSWORD}`` and not the password.
A literal password typed into a URI is still accepted; :func:`literal_password` lets the CLI
move it out of the way (see :func:`hide_literal_password`).

Examples
--------
>>> import os
>>> os.environ["MATLOOP_DOC_PW"] = "s3cret"
>>> resolve("mongodb://me:${MATLOOP_DOC_PW}@host/db")
'mongodb://me:s3cret@host/db'
>>> placeholders("mongodb://me:${env:MATLOOP_DOC_PW}@host/db")
['env:MATLOOP_DOC_PW']
>>> resolve("${MATLOOP_DOC_UNSET:-monty://./matloop-store}")
'monty://./matloop-store'
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

__all__ = [
    "STORE_ENV",
    "SecretError",
    "hide_literal_password",
    "literal_password",
    "placeholders",
    "register_resolver",
    "resolve",
]

#: The environment variable a store reference of ``${MATLOOP_STORE_URI}`` reads.
STORE_ENV = "MATLOOP_STORE_URI"

_PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WITH_DEFAULT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):-(.*)$")


class SecretError(ValueError):
    """A placeholder that cannot be resolved; the message names it, never a value."""


def _from_env(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise SecretError(f"${{{name}}}: not a valid environment variable name")
    value = os.environ.get(name)
    if value is None:
        raise SecretError(f"${{{name}}}: the environment variable {name} is not set")
    return value


_RESOLVERS: dict[str, Callable[[str], str]] = {"env": _from_env}


def register_resolver(prefix: str, resolver: Callable[[str], str]) -> None:
    """Make ``${prefix:NAME}`` placeholders resolvable by ``resolver(NAME)``."""
    _RESOLVERS[prefix] = resolver


def placeholders(text: str) -> list[str]:
    """The placeholders in ``text``, without their ``${`` ``}``."""
    return _PLACEHOLDER.findall(text)


def _split(inner: str) -> tuple[str, str, str | None]:
    """``NAME`` / ``env:NAME`` / ``NAME:-DEFAULT`` / ``kind:NAME`` → (kind, name, default)."""
    if match := _WITH_DEFAULT.match(inner):
        return "env", match.group(1), match.group(2)
    prefix, sep, name = inner.partition(":")
    return ("env", inner, None) if not sep else (prefix, name, None)


def check_placeholders(text: str) -> None:
    """Check placeholder syntax without resolving anything (for config validation)."""
    for inner in placeholders(text):
        prefix, name, _ = _split(inner)
        if prefix == "env" and not _ENV_NAME.match(name):
            raise SecretError(f"${{{inner}}}: not a valid environment variable name")
        if prefix not in {"env", "prefect-secret"} and prefix not in _RESOLVERS:
            raise SecretError(
                f"${{{inner}}}: unknown placeholder kind {prefix!r}; use ${{NAME}}, "
                "${env:NAME} or ${prefect-secret:BLOCK}"
            )
        if not name:
            raise SecretError(f"${{{inner}}}: empty name")


def resolve(text: str) -> str:
    """``text`` with every placeholder replaced by its value.

    Raises
    ------
    SecretError
        When a variable is unset, a Secret block cannot be read, or a kind is unknown.
    """

    def replace(match: re.Match) -> str:
        inner = match.group(1)
        prefix, name, default = _split(inner)
        if default is not None and name not in os.environ:
            return default
        resolver = _RESOLVERS.get(prefix)
        if resolver is None:
            if prefix == "prefect-secret":
                raise SecretError(
                    f"${{{inner}}} needs Prefect: import matloop.flows (the matloop command "
                    "and the flows do) before opening the store"
                )
            raise SecretError(f"${{{inner}}}: unknown placeholder kind {prefix!r}")
        return resolver(name)

    return _PLACEHOLDER.sub(replace, text)


def literal_password(uri: str) -> bool:
    """Whether ``uri`` carries a password typed in literally (not a placeholder)."""
    masked = _PLACEHOLDER.sub("\0", uri)
    if "://" not in masked:
        return False
    userinfo = masked.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
    _, sep, password = userinfo.partition(":")
    return bool(sep) and bool(password.replace("\0", ""))


def hide_literal_password(uri: str, env: str = STORE_ENV) -> str:
    """Keep a URI with a literal password out of flow parameters and logs.

    The URI goes into the environment variable ``env`` of this process (and of processes it
    starts) and the returned reference ``${env}`` takes its place. URIs without a literal
    password come back unchanged.
    """
    if not literal_password(uri):
        return uri
    os.environ[env] = uri
    return "${" + env + "}"

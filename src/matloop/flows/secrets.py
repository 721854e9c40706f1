"""``${prefect-secret:BLOCK}`` placeholders in store references, read from Prefect.

Importing :mod:`matloop.flows` (the flows and the CLI do) registers the resolver, so a
campaign file may say ``store: ${prefect-secret:matloop-store-uri}`` after::

    prefect block create secret   # or, in Python:
    Secret(value="mongodb://user:password@host:27017/matloop").save("matloop-store-uri")

The block's value is read when the store is opened and is never logged.
"""

from __future__ import annotations

from matloop.secrets import SecretError, register_resolver


def read_secret_block(name: str) -> str:
    """The value of the Prefect ``Secret`` block ``name``."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name, _sync=True).get()
    except ValueError as err:  # Prefect: "Unable to find block document named …"
        raise SecretError(
            f"${{prefect-secret:{name}}}: no Prefect Secret block named {name!r} on this "
            f"Prefect server ({type(err).__name__})"
        ) from None
    if not isinstance(value, str):
        raise SecretError(f"${{prefect-secret:{name}}}: the block's value is not a string")
    return value


register_resolver("prefect-secret", read_secret_block)

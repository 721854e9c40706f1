"""flows."""

from matloop.flows import secrets as _secrets  # noqa: F401  registers ${prefect-secret:…}

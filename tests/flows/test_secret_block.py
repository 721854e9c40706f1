"""${prefect-secret:BLOCK} against a real Prefect Secret block on a test server."""

from __future__ import annotations

import pytest

from matloop.secrets import SecretError, resolve
from matloop.store import MatloopStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_a_store_uri_read_from_a_prefect_secret_block(tmp_path):
    from prefect.blocks.system import Secret

    from matloop.flows.secrets import read_secret_block

    uri = f"monty://{tmp_path}/from-secret"
    Secret(value=uri).save("matloop-test-store-uri", overwrite=True)
    assert read_secret_block("matloop-test-store-uri") == uri
    assert resolve("${prefect-secret:matloop-test-store-uri}") == uri
    store = MatloopStore("${prefect-secret:matloop-test-store-uri}")
    assert store.campaigns() == []  # opened where the block's value points
    assert (tmp_path / "from-secret").is_dir()
    store.close()


def test_a_missing_block_is_named():
    import matloop.flows  # noqa: F401  registers the resolver

    with pytest.raises(SecretError, match="no Prefect Secret block named 'matloop-no-such-block'"):
        resolve("${prefect-secret:matloop-no-such-block}")

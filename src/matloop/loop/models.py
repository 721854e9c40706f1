"""Generator checkpoints kept as versioned ``ModelDoc`` in the store, so every round starts
from what the store holds."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from matloop.store import ModelDoc

if TYPE_CHECKING:
    from matloop.generators.base import ChemicalSpace, Generator
    from matloop.store import MatloopStore

__all__ = ["load_stored_model", "store_model"]


def load_stored_model(
    store: MatloopStore, doc: ModelDoc, space: ChemicalSpace, settings: dict | None = None
) -> Generator:
    """A generator checkpoint from the store, refused if its bytes fail the hash."""
    from matloop.generators.registry import load_generator

    data = store.load_model_bytes(doc)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{doc.name}-v{doc.version}.pt"
        path.write_bytes(data)
        # the store checked these bytes against the sha256 it recorded
        generator = load_generator(doc.name, str(path), space, settings, trust=True)
    generator.version = doc.version
    return generator


def store_model(
    store: MatloopStore, campaign: str, name: str, generator: Generator, round_: int
) -> None:
    """Keep the generator's state after learning as version ``round_`` in the store."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        generator.save(path)
        data = path.read_bytes()
    generator.version = round_
    store.save_model(
        ModelDoc(campaign=campaign, name=name, version=round_, kind=generator.name, sha256=""),
        data,
    )

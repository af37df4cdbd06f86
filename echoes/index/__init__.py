"""The archive index: one reader interface, one writer interface, one constructor.

:func:`open_index` is the one place an index is built from the
configuration (the protocols are in :mod:`echoes.index.base`): the TinyDB
catalog and study shards at ``index_path`` (:mod:`echoes.index.embedded`)
by default, PostgreSQL (:mod:`echoes.index.postgres`) when ``database_url``
is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, overload

from echoes.index.base import IndexReader, IndexWriter
from echoes.index.instance import InstanceRecord

if TYPE_CHECKING:
    from echoes.config import Config

__all__ = ["IndexReader", "IndexWriter", "copy_into_postgres", "open_index"]


@overload
def open_index(config: Config, writer: Literal[False] = False) -> IndexReader: ...
@overload
def open_index(config: Config, writer: Literal[True]) -> IndexWriter: ...


def open_index(config: Config, writer: bool = False) -> IndexReader | IndexWriter:
    """The index of this installation: a reader, or the one writer (``writer=True``:
    the ingester, or ``echoes reindex`` with the server stopped).
    """
    if config.database_url:
        from echoes.index import postgres

        if writer:
            return postgres.PostgresIndexWriter(config.database_url)
        return postgres.PostgresIndex(config.database_url)
    from echoes.index import embedded

    if writer:
        return embedded.ArchiveIndex(config.index_path)
    return embedded.EmbeddedIndex(config.index_path)


def copy_into_postgres(connection: Any, batches: Iterable[list[InstanceRecord]]) -> int:
    """Write batches of records into the PostgreSQL index on ``connection``, in the
    caller's transaction (``echoes migrate``); return how many records."""
    from echoes.index import postgres

    return postgres.copy_into(connection, batches)

"""Incremental runs: which sources a new version must process, and which rows it keeps.

A source is unchanged when the base version holds it with the same listing change token
(``source_etag``: the ETag, or size and mtime for local files). Its rows carry over; new and
changed sources are processed; sources gone from the listing leave the dataset. A base made by
another recipe (a different ``manifest_sha256``) carries nothing: the new version is built from
scratch rather than mixing rows made two ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import Reason

# Quarantined for reasons a second attempt may not meet again: retried every run. Others
# (a corrupt file, a bomb, burned-in text) stay quarantined until the source changes.
RETRIED = frozenset(
    {
        Reason.READ_ERROR,
        Reason.WRITE_ERROR,
        Reason.MISSING,
        Reason.SOURCE_CHANGED,
        Reason.TIMEOUT,
        Reason.WORKER_CRASH,
        Reason.INPAINT_ERROR,
    }
)
_IDS = pa.string()


@dataclass(frozen=True)
class Delta:
    """What a run does relative to its base version."""

    pending: pa.Table  # the sources to process (rows of listing.ITEM_SCHEMA)
    keep_ok: pa.Array  # image_ids whose base index rows carry over
    keep_quarantined: pa.Array  # image_ids whose base quarantine rows carry over
    new: int
    changed: int
    retried: int  # unchanged sources whose quarantine reason is worth another attempt
    removed: int  # ids of the base that are no longer listed

    @property
    def unchanged(self) -> int:
        return len(self.keep_ok) + len(self.keep_quarantined)


def everything(sources: pa.Table) -> Delta:
    """Process every source: there is no base, or it was made by another recipe."""
    empty = pa.array([], _IDS)
    return Delta(sources, empty, empty, sources.num_rows, 0, 0, 0)


def diff(sources: pa.Table, base_ok: pa.Table, base_quarantined: pa.Table) -> Delta:
    """Compare the listing with a base version's rows (columns image_id, source_etag[, reason]).

    ``base_ok`` may hold several rows per image (one per variant); they share a token.
    """
    listed = _tokens(sources["image_id"], sources["etag"])
    ok_ids = pc.unique(base_ok["image_id"])
    same_ok = _same(listed, _tokens(base_ok["image_id"], base_ok["source_etag"]))
    permanent = pc.invert(
        pc.is_in(base_quarantined["reason"], value_set=pa.array(sorted(RETRIED), pa.string()))
    )
    kept_q = base_quarantined.filter(permanent)
    same_q = _same(listed, _tokens(kept_q["image_id"], kept_q["source_etag"]))
    keep = pc.or_(same_ok, same_q)
    pending = sources.filter(pc.invert(keep))
    known = pc.or_(
        pc.is_in(sources["image_id"], value_set=ok_ids),
        pc.is_in(sources["image_id"], value_set=base_quarantined["image_id"]),
    )
    pending_known = pc.sum(pc.and_(pc.invert(keep), known)).as_py() or 0
    retried_ids = pc.is_in(
        sources["image_id"], value_set=base_quarantined.filter(pc.invert(permanent))["image_id"]
    )
    retried = pc.sum(pc.and_(pc.invert(keep), retried_ids)).as_py() or 0
    base_ids = pc.unique(pa.chunked_array([ok_ids, base_quarantined["image_id"]], _IDS))
    removed = len(base_ids) - (
        pc.sum(pc.is_in(base_ids, value_set=sources["image_id"])).as_py() or 0
    )
    return Delta(
        pending,
        sources["image_id"].filter(same_ok).combine_chunks(),
        sources["image_id"].filter(same_q).combine_chunks(),
        new=pending.num_rows - pending_known,
        changed=pending_known - retried,
        retried=retried,
        removed=removed,
    )


def _tokens(ids: pa.ChunkedArray, etags: pa.ChunkedArray) -> pa.Array:
    """image_id + NUL + change token; null where the store gave no token (never unchanged)."""
    return pc.binary_join_element_wise(ids, etags, "\x00")


def _same(listed: pa.Array, base: pa.Array) -> pa.Array:
    return pc.fill_null(pc.is_in(listed, value_set=pc.drop_null(base)), False)

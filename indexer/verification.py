"""``msir-index verify`` and ``verify --repair``: database <-> index <-> manifest <-> files.

``verify`` opens the collection without catching its index up, so what it reports is the state on disk:

* *index lag*: rows committed (or removed) after the saved index's feed position, e.g. by a build killed between a
  commit and the next index save. Any open catches it up; ``--repair`` does so and saves.
* *orphan / missing rows* (see :mod:`indexer.consistency`): drift the feed does not explain; ``--repair`` rebuilds.
* *orphan files*: files under ``uploads/`` no row references (and pending uploads of a killed process);
  ``--repair`` deletes them, or moves a pending file in when its row was committed.
* *missing files*: rows whose file is gone. Not repairable here (the bytes are lost): restore the files or remove
  the rows (``msir-index remove --id``); searches still work, the image itself cannot be served.

"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer import consistency as cons
from indexer import row_paths
from indexer import upload_files as uploads
from indexer.records import VerifyReport

if TYPE_CHECKING:
    from indexer.collection import Collection

logger = logging.getLogger(__name__)
SHOWN = 1000  # ids / names listed in a report's details


def file_problems(col: Collection) -> tuple[list[int], list[Path], list[Path]]:
    """``(ids of rows whose file is missing, orphan files under uploads/, stale pending uploads)``. A file that a row
    refers to is never an orphan, so repair never deletes it."""
    referenced: set[Path] = set()
    missing: list[int] = []
    for image_id, path in col.store.iter_paths():
        file = row_paths.resolve(col.directory, path)
        if not file.is_file():
            missing.append(image_id)
        referenced.add(file.resolve())
    orphans = [p for p in uploads.stored_files(col.directory) if p.resolve() not in referenced]
    return missing, orphans, uploads.stale_pending(col.directory)


def sampled_file_problems(col: Collection, ids: np.ndarray) -> list[int]:
    """Ids among ``ids`` whose row names a file that is gone (``verify --sample``: no listing of ``uploads/``)."""
    records = col.store.get_many(ids.tolist())
    return sorted(
        i for i, r in records.items() if r.path is not None and not row_paths.resolve(col.directory, r.path).is_file()
    )


def verify(col: Collection, sample: int | None = None) -> VerifyReport:
    """Every check; pending index changes of this process are saved first.

    ``sample`` (``verify --sample N``, for collections too large to scan): the id, vector and file checks look at
    about N rows drawn from the database and N ids drawn from the index instead of every one, plus the exact row and
    vector counts; the embedding-length and duplicate scans and the orphan-file listing are skipped. A clean sample
    is evidence, not proof: drift affecting a fraction f of the rows is missed with probability about (1 - f)^N."""
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    with col._write_lock():
        if col._dirty and not col.problems:
            col._save()
        saved = not col._dirty
        info = col.store.info()
        head = col.store.head()
        # Changes after the index's feed position explain part of any id difference: that part is lag, not drift.
        touched = np.asarray(
            sorted({c.image_id for c in col.store.changes_since(col.seq, head) if c.image_id is not None}), np.int64
        )
        with col._rw.read():
            index = col._index
            problems = [p for p in col.problems if p.startswith("index unreadable")]
            problems += cons.identity_problems(col.manifest, info, col.embedder, index)
            index_ids = index.ids()
            if sample is None:
                drawn = None
                diff = cons.diff_ids(col.store.ids(), index_ids)
            else:
                # Rows drawn from the database and ids drawn from the index, each side checked against the other.
                from_db = col.store.sample_ids(sample)
                rng = np.random.default_rng(0)
                from_index = np.sort(rng.choice(index_ids, min(sample, len(index_ids)), replace=False))
                drawn = np.union1d(from_db, from_index)
                in_db = np.union1d(from_db, np.fromiter(col.store.existing_ids(from_index), np.int64))
                in_index = np.intersect1d(drawn, index_ids)
                newest = int(index_ids.max()) if len(index_ids) else -1
                diff = cons.diff_ids(in_db, in_index, newest)
            late = np.intersect1d(diff.orphans, touched)
            stale = np.intersect1d(diff.missing, touched)
            drift = cons.IdDiff(
                lagging=diff.lagging,
                orphans=np.setdiff1d(diff.orphans, touched),
                missing=np.setdiff1d(diff.missing, touched),
            )
            problems += cons.drift_problems(drift)
            lagging = len(diff.lagging) + len(late)
            if lagging or len(stale):
                problems.append(
                    f"index lag: the saved index misses {lagging} database row(s) and still holds {len(stale)} "
                    f"removed one(s) (feed position {col.seq}, database at {head}); any open catches it up, "
                    f"`msir-index verify --repair` also saves it"
                )
            problems += cons.deep_problems(col.store, index, col.manifest, saved, drawn)
            vectors = index.ntotal
            rows = int(col.store.count())
            if drawn is not None and not len(touched) and rows != vectors:
                problems.append(
                    f"count mismatch: {rows} database rows, {vectors} vectors in the index, and no change since the "
                    f"index's feed position explains it; a full `msir-index verify` lists the ids"
                )
    if drawn is None:
        missing_files, orphan_files, pending = file_problems(col)
    else:
        missing_files, orphan_files = sampled_file_problems(col, drawn), []
        pending = uploads.stale_pending(col.directory)
    if missing_files:
        problems.append(
            f"missing files: {len(missing_files)} row(s) whose file is gone (ids {cons.show_ids(missing_files)}); "
            f"restore the files or remove the rows"
        )
    if orphan_files or pending:
        problems.append(
            f"orphan files: {len(orphan_files)} file(s) under uploads/ without a row, {len(pending)} stale pending "
            f"upload(s); `msir-index verify --repair` removes them"
        )
    details = {
        "rows": rows,
        "sampled_ids": None if drawn is None else len(drawn),
        "vectors": vectors,
        "generation": col.manifest.generation,
        "seq": col.seq,
        "head": head,
        "orphan_rows": [int(i) for i in drift.orphans[:SHOWN]],
        "missing_rows": [int(i) for i in drift.missing[:SHOWN]],
        "lagging_rows": lagging,
        "removed_rows_in_index": len(stale),
        "missing_files": [int(i) for i in missing_files[:SHOWN]],
        "missing_files_count": len(missing_files),
        "orphan_files": [str(p.relative_to(col.directory)) for p in orphan_files[:SHOWN]],
        "orphan_files_count": len(orphan_files),
        "stale_pending_uploads": len(pending),
    }
    return VerifyReport(ok=not problems, problems=problems, details=details)


def _settle(col: Collection, pending: list[Path]) -> tuple[int, int]:
    """Move in the pending files whose row was committed, delete the others; ``(moved, removed)``."""
    moved = removed = 0
    for file in pending:
        final = uploads.final_of_pending(col.directory, file)
        try:
            if not final.is_file() and col.store.ids_for_paths([row_paths.to_stored(col.directory, final)]):
                uploads.settle(file, final)  # its row was committed, the move was not: finish it
                moved += 1
            else:
                file.unlink()
                removed += 1
        except FileNotFoundError:  # settled meanwhile by another process starting on the same collection
            continue
    for lock in uploads.dead_owner_locks(col.directory):
        lock.unlink(missing_ok=True)
    return moved, removed


def settle_dead_uploads(col: Collection) -> tuple[int, int]:
    """Settle the pending uploads of processes that died mid-upload (a live writer's are left alone) and remove the
    files of deleted rows a killed process left: run when a server starts, so that a kill -9 leaves nothing for
    ``verify`` to find. Returns ``(moved in, removed)``."""
    moved, removed = _settle(col, uploads.stale_pending(col.directory))
    if moved or removed:
        logger.info(
            "%s: settled the pending uploads of a stopped process: %d moved in (row committed), %d removed",
            col.directory,
            moved,
            removed,
        )
    # A process killed between a delete's commit and the removal of its file left that file without a row. Under the
    # writer lock no upload is between its commit and its move in, so a file no row names is such a leftover.
    with col._write_lock():
        _, orphans, _ = file_problems(col)
        for file in orphans:
            file.unlink(missing_ok=True)
    if orphans:
        logger.info("%s: removed %d upload(s) of deleted rows left by a stopped process", col.directory, len(orphans))
    return moved, removed + len(orphans)


def repair(col: Collection) -> list[str]:
    """Fix what can be fixed; returns what was done (and what could not be)."""
    done: list[str] = []
    with col._write_lock():
        before = (col.ntotal, col.seq)
        drift = col._catch_up()
        if drift:
            col.rebuild()
            done.append(f"rebuilt the index from the database ({'; '.join(drift)})")
        elif (col.ntotal, col.seq) != before:
            done.append(f"caught the index up with the database: {before[0]} -> {col.ntotal} vectors, saved")
        missing, orphans, pending = file_problems(col)
        moved, removed = _settle(col, pending)
        for file in orphans:
            file.unlink(missing_ok=True)
            removed += 1
        if moved:
            done.append(f"moved {moved} committed pending upload(s) into uploads/")
        if removed:
            done.append(f"removed {removed} orphan file(s) under uploads/")
        still_missing = len(missing) - moved
        if still_missing > 0:
            done.append(
                f"not repaired: {still_missing} row(s) whose file is missing (restore the files or "
                f"`msir-index remove --id` the rows)"
            )
    for line in done:
        logger.info("%s: %s", col.directory, line)
    return done

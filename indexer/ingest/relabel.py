"""Re-labelling stored, unlabelled images when a labelled source lists them again (no re-embedding)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.ingest.pipeline import BuildReport
    from indexer.ingest.sources import Source
    from indexer.metadata.queries import MetadataStore


def label_unlabelled(store: MetadataStore, source: Source, result: BuildReport) -> int:
    """Give the source's labels to images it lists that are already stored without any (a folder indexed before
    its labels were read): re-running a build with a labelled source fixes a collection, no re-embedding."""
    wanted = {item.uri: item.labels for item in source.items if item.labels}
    targets = {image_id: wanted[uri] for uri, image_id in result.already_present if uri in wanted}
    if not targets:
        return 0
    groups: dict[tuple[str, ...], list[int]] = {}
    for image_id, record in store.get_many(targets).items():
        if not record.labels:
            groups.setdefault(tuple(targets[image_id]), []).append(image_id)
    return sum(len(store.edit(ids, labels=list(labels))) for labels, ids in groups.items())

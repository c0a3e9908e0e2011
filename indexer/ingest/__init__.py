"""Getting images in: sources (dataset readers, file lists), decoding workers, the build pipeline and shards."""

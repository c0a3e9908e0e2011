"""Where the vectors live: the ``VectorStore`` interface, its backends (FAISS, Milvus) and their registry."""

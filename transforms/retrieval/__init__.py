"""First-stage candidates: exact dense top-k, BM25, supplied runs, query accounting."""

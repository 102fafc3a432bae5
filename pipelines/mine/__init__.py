"""`promptmine mine`: image shards -> image-prompt Parquet, by batched PEZ in a Ray Data actor pool."""

"""The resumable shard-job framework every Ray Data job runs on: per-shard rows, rejects, done markers, progress."""

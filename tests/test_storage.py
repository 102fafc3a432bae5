"""pipelines.io.storage: local and s3:// URIs through pyarrow, AWS config, endpoint override, no leaked secrets."""

import os

import pytest

from pipelines.io.storage import Credentials, Location, StorageError, StorageOptions, split_uri


def test_split_uri_local_and_s3():
    assert split_uri("s3://bucket/a/b/") == ("s3", "bucket/a/b")
    assert split_uri("s3://bucket") == ("s3", "bucket")
    assert split_uri("relative/dir") == ("file", os.path.abspath("relative/dir"))
    assert split_uri("file:///tmp/x") == ("file", "/tmp/x")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        split_uri("gs://bucket/x")
    with pytest.raises(ValueError, match="needs a bucket"):
        split_uri("s3:///prefix")


def test_credentials_in_a_uri_are_refused_without_echoing_them():
    with pytest.raises(ValueError) as e:
        split_uri("s3://AKIAEXAMPLE:supersecretvalue@bucket/x")
    assert "supersecretvalue" not in str(e.value)
    with pytest.raises(ValueError) as e:
        StorageOptions(endpoint_url="http://user:supersecretvalue@127.0.0.1:9000")
    assert "supersecretvalue" not in str(e.value)


def test_credentials_repr_is_redacted():
    opts = StorageOptions(endpoint_url="http://127.0.0.1:1", credentials=Credentials("AKIDVISIBLE", "s3cr3t-value"))
    for text in (repr(opts), str(opts), repr(opts.credentials), str(opts.describe()), repr(opts.resolve("s3://b/x"))):
        assert "s3cr3t-value" not in text and "AKIDVISIBLE" not in text


def test_local_write_is_whole_and_replaces(tmp_path):
    loc = Location(str(tmp_path / "a" / "b.bin"))
    loc.write_bytes(b"first version, longer")
    loc.write_bytes(b"second")
    assert loc.read_bytes() == b"second"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]  # no temporary files left
    assert [(l.relative_to(Location(str(tmp_path))), n) for l, n in Location(str(tmp_path)).list_files()] == [
        ("a/b.bin", 6)]
    assert Location(str(tmp_path / "absent")).list_files() == []


def test_s3_roundtrip_with_the_standard_aws_environment(s3_env):
    s3_env.make_bucket("storage-test")
    opts = StorageOptions.from_env()  # endpoint, region and keys all from AWS_* variables
    assert opts.endpoint_url == s3_env.endpoint_url and opts.region == s3_env.region
    assert opts.credentials is not None and opts.credentials.access_key == s3_env.access_key
    root = opts.resolve("s3://storage-test/prefix")
    root.child("x", "one.txt").write_text("hello")
    root.child("two.txt").write_bytes(b"12345")
    assert root.child("x/one.txt").read_text() == "hello"
    assert [(l.relative_to(root), n) for l, n in root.list_files()] == [("two.txt", 5), ("x/one.txt", 5)]
    assert root.child("x").is_dir() and root.child("two.txt").exists() and not root.child("nope").exists()
    # the object really is in the bucket (seen through boto3, not through our code)
    body = s3_env.client().get_object(Bucket="storage-test", Key="prefix/x/one.txt")["Body"].read()
    assert body == b"hello"


def test_endpoint_flag_overrides_the_environment(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    opts = StorageOptions.from_env(endpoint_url=s3_env.endpoint_url)
    assert opts.endpoint_url == s3_env.endpoint_url
    s3_env.make_bucket("storage-flag")
    opts.resolve("s3://storage-flag/k").write_text("ok")
    assert opts.resolve("s3://storage-flag/k").read_text() == "ok"


def test_missing_object_error_names_the_uri_and_no_secret(s3_env):
    s3_env.make_bucket("storage-missing")
    opts = StorageOptions.from_env()
    with pytest.raises(StorageError) as e:
        opts.resolve("s3://storage-missing/nothing/here.tar").read_bytes()
    assert "s3://storage-missing/nothing/here.tar" in str(e.value)
    assert s3_env.secret_key not in str(e.value) and s3_env.access_key not in str(e.value)


def test_worker_credentials_mode_does_not_forward_keys(s3_env):
    opts = StorageOptions.from_env(forward_credentials=False)
    assert opts.credentials is None and opts.describe()["credentials"] == "worker default chain"
    s3_env.make_bucket("storage-worker")
    opts.resolve("s3://storage-worker/a").write_text("own chain")  # pyarrow's own chain reads AWS_* here
    assert opts.resolve("s3://storage-worker/a").read_text() == "own chain"


def test_wrong_secret_is_refused_by_seaweedfs_without_leaking_it(seaweed_server):
    seaweed_server.make_bucket("storage-auth")
    wrong = Credentials(seaweed_server.access_key, "definitely-wrong-secret-123")
    opts = StorageOptions(endpoint_url=seaweed_server.endpoint_url, region="us-east-1", credentials=wrong)
    with pytest.raises(StorageError) as e:
        opts.resolve("s3://storage-auth/x.bin").write_bytes(b"data")
    assert "s3://storage-auth/x.bin" in str(e.value)
    assert "definitely-wrong-secret-123" not in str(e.value) and seaweed_server.access_key not in str(e.value)
    right = StorageOptions(endpoint_url=seaweed_server.endpoint_url, region="us-east-1",
                           credentials=Credentials(seaweed_server.access_key, seaweed_server.secret_key))
    right.resolve("s3://storage-auth/x.bin").write_bytes(b"data")
    assert right.resolve("s3://storage-auth/x.bin").read_bytes() == b"data"

"""--credentials: the default choice, and forwarded temporary credentials refreshed through the
broker on the driver's node; no secret in any output object or printed line."""

import json
import os
import sys

import pytest

from pipelines.cli import build_parser, main
from pipelines.io.samples import sample_records, webdataset_bytes
from pipelines.jobs.cli import storage_options
from pipelines.jobs.credentials import expiring, refreshed, resolve_mode, start_broker

# a credential_process (the AWS CLI's hook for SSO helpers and vaults): each call hands out new
# temporary keys valid for 5 minutes, and records which process asked
_PROCESS = """
import datetime, json, os, sys
n = len(open(sys.argv[1]).read().split()) if os.path.exists(sys.argv[1]) else 0
open(sys.argv[1], "a").write(f"{os.getppid()}\\n")  # who resolved: the driver, or a broker actor
exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": f"AKIATEMP{n:04d}", "SecretAccessKey": f"temp-secret-{n:04d}",
                  "SessionToken": f"temp-token-{n:04d}", "Expiration": exp.isoformat()}))
"""


@pytest.fixture
def temporary_credentials(tmp_path, monkeypatch):
    script, calls = tmp_path / "creds.py", tmp_path / "calls.txt"
    script.write_text(_PROCESS)
    config = tmp_path / "config"
    config.write_text(f"[profile temp]\ncredential_process = {sys.executable} {script} {calls}\nregion = us-east-1\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "temp")
    return calls


def test_default_is_worker_on_a_cluster_and_forward_on_a_local_ray(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADEFAULT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "default-secret")
    local = build_parser().parse_args(["mine", "--input", "s3://b/i", "--output", "s3://b/o"])
    cluster = build_parser().parse_args(["mine", "--input", "s3://b/i", "--output", "s3://b/o", "--address", "auto"])
    assert local.credentials == cluster.credentials == "auto"
    assert storage_options(local).describe()["credentials"] == "forwarded"
    assert storage_options(cluster).credentials is None  # each node's own chain: nothing shipped
    assert resolve_mode("forward", "auto") == "forward" and resolve_mode("worker", None) == "worker"


def test_forwarded_temporary_credentials_are_refreshed_and_never_written(ray_cluster, s3_server, temporary_credentials,
                                                                      monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    bucket = s3_server.make_bucket("creds-refresh")
    client = s3_server.client()
    for s in range(2):
        client.put_object(Bucket=bucket, Key=f"in/{s:05d}.tar", Body=webdataset_bytes(sample_records(s, 2, size=32)))
    args = build_parser().parse_args(["mine", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out"])
    options = storage_options(args)
    assert options.credentials.access_key.startswith("AKIATEMP") and expiring(options)  # 5 min left < the margin
    broker = start_broker(options)
    fresh = refreshed(options, broker)  # re-resolved on the driver's node, through the driver's profile
    assert fresh.credentials.access_key != options.credentials.access_key and expiring(fresh)

    callers = set(temporary_credentials.read_text().split())
    assert main(["mine", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out", "--steps", "3",
                 "--prompt-len", "4", "--batch-size", "4"]) == 0
    # the job's own broker (a new process on this node) resolved fresh keys for its read tasks and shards
    new = set(temporary_credentials.read_text().split()) - callers - {str(os.getpid())}
    assert len(new) == 1
    printed = capsys.readouterr()
    blob = printed.out + printed.err
    for obj in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]:
        blob += client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode(errors="replace")
    assert "_job.json" in json.dumps([o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]])
    assert "temp-secret" not in blob and "temp-token" not in blob and "AKIATEMP" not in blob

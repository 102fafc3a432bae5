"""A real S3-protocol server on 127.0.0.1 (moto's server mode) in its own process.

Every Ray worker reaches it over loopback. The server stops when the session ends (and, being a
child with a parent watchdog, if the test process dies).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import socket
import time

import pytest


@dataclasses.dataclass
class S3Server:
    endpoint_url: str  # http://127.0.0.1:PORT
    access_key: str = "testing-access"
    secret_key: str = "testing-secret"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard AWS environment variables that point boto3 and pyarrow at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, parent: int) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    while True:  # stop by ourselves when the test process is gone
        time.sleep(1)
        try:
            os.kill(parent, 0)
        except OSError:
            server.stop()
            return


def _wait_until_up(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server on 127.0.0.1:{port} did not start in {timeout}s")


@pytest.fixture(scope="session")
def s3_server():
    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_serve, args=(port, os.getpid()), daemon=True)
    proc.start()
    try:
        _wait_until_up(port)
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.join(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS environment of ``s3_server`` set for one test (and inherited by Ray workers started after)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server

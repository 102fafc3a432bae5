"""``promptmine serve --config serve/config.yaml`` in its own process: it starts its own local Ray,
binds 127.0.0.1, takes the bearer token from PROMPTMINE_API_TOKEN, applies command-line overrides
to the YAML, and stops cleanly on Ctrl-C (SIGINT)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parser_rejects_bad_set():
    from pipelines.cli import main

    assert main(["serve", "--set", "no-equals-sign"]) == 2


def test_refuses_an_open_api_beyond_loopback(monkeypatch, capsys):
    from pipelines.cli import main
    from serve.cli import check_token_for_host

    monkeypatch.delenv("PROMPTMINE_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2  # exits before any Ray starts
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "PROMPTMINE_API_TOKEN" in err and "--allow-no-token" in err
    assert main(["serve", "--config", str(REPO / "serve/config.yaml"), "--host", "10.1.2.3"]) == 2
    for host in ("127.0.0.1", "localhost", "::1"):  # loopback: an open API is allowed
        check_token_for_host(host, [{}], allow_no_token=False)
    check_token_for_host("0.0.0.0", [{}], allow_no_token=True)
    check_token_for_host("0.0.0.0", [{"auth_token_file": "/run/secrets/token"}], allow_no_token=False)
    monkeypatch.setenv("PROMPTMINE_API_TOKEN", "set")
    check_token_for_host("0.0.0.0", [{}], allow_no_token=False)


@pytest.fixture(scope="module")
def cli_server():
    port = free_port()
    token = "cli-" + os.urandom(8).hex()
    env = {**os.environ, "PROMPTMINE_API_TOKEN": token, "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--config", str(REPO / "serve/config.yaml"),
           "--port", str(port), "--num-cpus", "2", "--set", "max_prompts=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.time() + 150
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "ready at" in line:
            break
    else:
        proc.send_signal(signal.SIGINT)
    if proc.poll() is not None or not any("ready at" in x for x in lines):
        proc.kill()
        pytest.fail("promptmine serve did not start:\n" + "".join(lines[-40:]))
    yield proc, port, token, lines
    if proc.poll() is None:
        proc.kill()


def test_cli_serves_with_env_token_and_overrides(cli_server):
    proc, port, token, lines = cli_server
    ready = [x for x in lines if "ready at" in x][0]
    assert f"http://127.0.0.1:{port}/" in ready  # loopback unless --host says otherwise
    assert token not in "".join(lines)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
    r = httpx.post(f"{base}/v1/rewrite", json={"prompt": "a cat", "max_new_tokens": 4}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    r = httpx.post(f"{base}/v1/rewrite", json={"prompt": "a cat", "max_new_tokens": 4}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny" and r.json()["results"][0]["new_tokens"] <= 4
    r = httpx.post(f"{base}/v1/rewrite", json={"prompts": ["a", "b", "c"]}, headers=auth, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompts"  # --set max_prompts=2 won
    models = httpx.get(f"{base}/v1/models", headers=auth, timeout=30).json()
    assert models["limits"]["max_prompts"] == 2 and models["rewrite"]["stats"]["max_batch_size"] == 64


def test_cli_stops_on_ctrl_c(cli_server):
    proc, port, _, _ = cli_server
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out[-3000:]
    assert "shutting down" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

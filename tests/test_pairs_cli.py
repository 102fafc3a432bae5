"""`promptmine pairs` through pipelines.cli.main: rule and LLM summaries, rejects file, errors."""

import json

import pandas as pd
import pyarrow.parquet as pq

from pipelines.cli import main
from tests.test_pairs import HIGH, LOW, fake_llm, synthetic_table  # noqa: F401  (fixture reused)


def test_pairs_rule_summariser_writes_pairs_and_rejects(tmp_path, capsys):
    folder = tmp_path / "metadata"
    folder.mkdir()
    table = synthetic_table()
    table.iloc[:8].to_parquet(folder / "part-000.parquet")  # a folder of shards, read in order
    table.iloc[8:].to_parquet(folder / "part-001.parquet")
    (tmp_path / "block.txt").write_text("# extra words\nlighthouse\n")
    argv = ["pairs", "--input", str(folder), "--output", str(tmp_path / "pairs.parquet"),
            "--rejects", str(tmp_path / "rejects.parquet"), "--blocklist", str(tmp_path / "block.txt"), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    pairs = pq.read_table(tmp_path / "pairs.parquet").to_pandas()
    assert summary["written"] == len(pairs) == 3 and summary["rows_read"] == len(table)
    assert pairs["prompt"].tolist() == [HIGH[0], HIGH[2], HIGH[3]]  # the lighthouse prompt is blocked
    assert list(pairs.columns) == ["raw_prompt", "prompt", "source", "pick_score", "aesthetic_score"]
    rejects = pd.read_parquet(tmp_path / "rejects.parquet")
    assert "raw_prompt NSFW word 'lighthouse'" in rejects["reason"].tolist()
    assert summary["rejected"]["raw_prompt NSFW word"] == 2  # 'lighthouse' and 'nude'


def test_pairs_llm_summariser_over_http(tmp_path, capsys, monkeypatch, fake_llm):  # noqa: F811
    monkeypatch.setenv("PAIRS_KEY", fake_llm.expected_key)
    pd.DataFrame({"prompt": HIGH + LOW}).to_csv(tmp_path / "prompts.csv", index=False)
    argv = ["pairs", "--input", str(tmp_path / "prompts.csv"), "--output", str(tmp_path / "p.parquet"),
            "--summariser", "llm", "--llm-url", fake_llm.url + "/v1", "--llm-model", "m",
            "--llm-api-key-env", "PAIRS_KEY"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "wrote 4 pairs" in out.out and fake_llm.expected_key not in out.out + out.err
    pairs = pd.read_parquet(tmp_path / "p.parquet")
    assert pairs["raw_prompt"].tolist()[0] == "summary of portrait of an" and len(fake_llm.requests) == 4


def test_pairs_cli_errors(tmp_path, capsys):
    assert main(["pairs", "--input", str(tmp_path / "none.parquet"), "--output", str(tmp_path / "o.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    pd.DataFrame({"text": ["a"]}).to_parquet(tmp_path / "t.parquet")
    assert main(["pairs", "--input", str(tmp_path / "t.parquet"), "--output", str(tmp_path / "o.parquet")]) == 2
    assert "no 'prompt' column" in capsys.readouterr().err
    assert main(["pairs", "--input", str(tmp_path / "t.parquet"), "--output", str(tmp_path / "o.parquet"),
                 "--prompt-column", "text", "--summariser", "llm"]) == 2
    assert "no base URL" in capsys.readouterr().err


def test_pairs_llm_expander_over_http(tmp_path, capsys, monkeypatch, fake_llm):  # noqa: F811
    """The paper's third source: low-quality prompts expanded by an OpenAI-compatible LLM."""
    monkeypatch.setenv("PAIRS_KEY", fake_llm.expected_key)
    pd.DataFrame({"prompt": HIGH + LOW + LOW[:1] + ["a EMPTY answer"]}).to_csv(tmp_path / "prompts.csv", index=False)
    argv = ["pairs", "--input", str(tmp_path / "prompts.csv"), "--output", str(tmp_path / "p.parquet"),
            "--summariser", "none", "--expander", "llm", "--llm-url", fake_llm.url + "/v1", "--llm-model", "m",
            "--llm-api-key-env", "PAIRS_KEY", "--rejects", str(tmp_path / "r.parquet"), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    pairs = pd.read_parquet(tmp_path / "p.parquet")
    assert pairs["raw_prompt"].tolist() == LOW  # each distinct low-quality prompt once, in input order
    assert pairs["prompt"].tolist() == [f"{raw}, highly detailed, digital painting, artstation, 8k" for raw in LOW]
    assert set(pairs["source"]) == {"expansion"} and summary["candidates"] == {"expansion": 3}
    rejects = pd.read_parquet(tmp_path / "r.parquet")
    assert rejects["reason"].tolist() == ["expander returned nothing"]
    bodies = [r["body"] for r in fake_llm.requests]
    assert len(bodies) == 4 and all("Expand" in b["messages"][0]["content"] for b in bodies)
    assert all(b["max_tokens"] == 256 for b in bodies)
    # both sources in one run: summaries of the high-quality prompts and expansions of the low ones
    argv[argv.index("none")] = "llm"
    assert main(argv) == 0
    both = pd.read_parquet(tmp_path / "p.parquet")
    assert sorted(set(both["source"])) == ["expansion", "summary"]

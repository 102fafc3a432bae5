"""`promptmine rewrite-text` through pipelines.cli.main, on a tiny BLOOM folder."""

import json

from pipelines.cli import main
from pez_core.rewrite.rewriter import Rewriter


def test_rewrite_text_json_matches_the_library(tiny_lm_dir, capsys, tmp_path):
    (tmp_path / "more.txt").write_text("a castle\n\n  a fox in the snow \n")
    argv = ["rewrite-text", "a cat", "--file", str(tmp_path / "more.txt"), "--model", str(tiny_lm_dir),
            "--max-new-tokens", "6", "--batch-size", "2", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    raws = [r["raw_prompt"] for r in out["results"]]
    assert raws == ["a cat", "a castle", "  a fox in the snow "]
    expected = Rewriter.from_pretrained(tiny_lm_dir).rewrite(raws, max_new_tokens=6)
    assert [r["prompt"] for r in out["results"]] == expected
    assert all(1 <= r["new_tokens"] <= 6 for r in out["results"]) and out["prompts"] == 3
    assert out["new_tokens"] == sum(r["new_tokens"] for r in out["results"]) and out["prompts_per_s"] > 0


def test_rewrite_text_plain_output_and_errors(tiny_lm_dir, capsys, tmp_path):
    assert main(["rewrite-text", "a cat", "a dog", "--model", str(tiny_lm_dir), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "2 prompts in" in captured.err
    assert main(["rewrite-text", "a cat", "  ", "--model", str(tiny_lm_dir)]) == 2
    assert "prompts[1]: prompt is only whitespace" in capsys.readouterr().err
    assert main(["rewrite-text", "--model", str(tiny_lm_dir)]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["rewrite-text", "a cat", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["rewrite-text", "a cat", "--model", str(tiny_lm_dir), "--mode", "beam", "--num-beams", "1"]) == 2
    assert "num_beams must be an integer >= 2" in capsys.readouterr().err

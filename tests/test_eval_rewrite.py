"""`promptmine eval rewrite` on the moto S3 server: raw and rewritten prompts are both judged against
the RAW prompt, as BeautifulPrompt evaluates; scores equal a manual computation."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.io.storage import StorageOptions

PAIRS = [{"key": "a", "raw_prompt": "a cat", "prompt": "a cat, highly detailed, digital painting, artstation"},
         {"key": "b", "raw_prompt": "a castle", "prompt": "a castle at dusk, matte painting"},
         {"key": "c", "raw_prompt": "", "prompt": "no raw prompt"},
         {"key": "a", "raw_prompt": "a cat again", "prompt": "duplicate key"}]


def table_bytes(rows):
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def rewrite_flags(tiny_sd_dir, tiny_pickscore_dir, tiny_aesthetic_path, tiny_clip_dir):
    return ["--generator", str(tiny_sd_dir), "--steps", "2", "--size", "32", "--seeds", "2",
            "--pickscore", str(tiny_pickscore_dir), "--pickscore-processor", str(tiny_pickscore_dir),
            "--aesthetic-weights", str(tiny_aesthetic_path), "--aesthetic-clip", "tiny",
            "--clip-score-model", str(tiny_clip_dir), "--actors", "1"]


def test_eval_rewrite_on_s3_scores_both_prompts_against_the_raw_one(ray_cluster, s3_env, rewrite_flags, tiny_sd_dir,
                                                                    tiny_pickscore_dir, tiny_clip_dir, capsys):
    bucket = s3_env.make_bucket("eval-rewrite")
    s3_env.client().put_object(Bucket=bucket, Key="in/rewritten.parquet", Body=table_bytes(PAIRS))
    assert main(["eval", "rewrite", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out",
                 *rewrite_flags]) == 0
    printed = capsys.readouterr().out
    out = StorageOptions.from_env().resolve(f"s3://{bucket}/out")
    rows = pd.read_parquet(out.child("rows").path, filesystem=out.fs).set_index("key")
    rejects = pd.read_parquet(out.child("rejects").path, filesystem=out.fs)
    assert sorted(rows.index) == ["a", "b"]
    assert dict(zip(rejects["key"], rejects["reason"])) == {
        "c": "empty raw_prompt", "a": "duplicate key in shard (first occurrence kept)"}

    from pez_core.scoring import ClipScorer, GenerationConfig, Generator, PickScorer

    gen = Generator(GenerationConfig(model=str(tiny_sd_dir), steps=2, size=32, guidance=7.5))
    pick = PickScorer(str(tiny_pickscore_dir), str(tiny_pickscore_dir))
    clip = ClipScorer(str(tiny_clip_dir))
    for column, text in (("raw_", "a castle"), ("", "a castle at dusk, matte painting")):
        images = gen.generate([text, text], [0, 1])
        judged = ["a castle", "a castle"]  # both judged against the raw prompt
        assert rows.loc["b", f"{column}pick_score"] == pytest.approx(pick.score(judged, images).mean().item(), abs=1e-3)
        assert rows.loc["b", f"{column}clip_score"] == pytest.approx(clip.clip_score(judged, images).mean().item(),
                                                                     abs=1e-3)
    assert rows.loc["b", "raw_pick_score"] != rows.loc["b", "pick_score"]
    assert rows["raw_image"].map(lambda b: b[:2] == b"\xff\xd8").all()

    metrics = json.loads(out.child("metrics.json").read_text())
    delta = metrics["pick_score"]["rewritten_minus_raw"]
    assert delta["mean"] == pytest.approx((rows["pick_score"] - rows["raw_pick_score"]).mean(), abs=1e-5)
    assert delta["win_rate"] == (rows["pick_score"] > rows["raw_pick_score"]).mean()
    assert "pick_score.rewritten_minus_raw" in printed

    # the report reads the S3 output and writes next to it
    assert main(["report", f"s3://{bucket}/out"]) == 0
    page = out.child("report.html").read_text()
    assert "a castle at dusk, matte painting" in page and page.count("<img ") == 4
    assert out.child("report.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_rewrite_reads_a_promptmine_rewrite_output_folder(ray_cluster, tmp_path, tiny_lm_dir, rewrite_flags):
    """The jobs chain: `rewrite` writes raw_prompt/prompt/key rows; `eval rewrite --input` that folder."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "t.parquet").write_bytes(table_bytes([{"prompt": p} for p in ("a cat", "a red castle")]))
    assert main(["rewrite", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "rw"), "--model",
                 str(tiny_lm_dir), "--max-new-tokens", "6", "--min-new-tokens", "3", "--actors", "1"]) == 0
    assert main(["eval", "rewrite", "--input", str(tmp_path / "rw"), "--output", str(tmp_path / "ev"),
                 *rewrite_flags, "--seeds", "1"]) == 0
    rewritten = pd.read_parquet(tmp_path / "rw" / "rows").set_index("key")
    scored = pd.read_parquet(tmp_path / "ev" / "rows").set_index("key")
    rejects = pd.read_parquet(tmp_path / "ev" / "rejects")
    assert sorted([*scored.index, *rejects["key"]]) == sorted(rewritten.index)  # the rewrite's own keys
    assert (scored["prompt"] == rewritten.loc[scored.index, "prompt"]).all()
    assert (scored["raw_prompt"] == rewritten.loc[scored.index, "raw_prompt"]).all() and len(scored) >= 1

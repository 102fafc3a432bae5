"""`promptmine report` on a real local `eval rewrite` output: the page shows every row's thumbnails,
prompts, scores and metrics; the contact sheet puts each image where its label says."""

import base64
import html
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.cli import main
from tests.test_eval_rewrite import PAIRS, rewrite_flags, table_bytes  # noqa: F401 (fixture reused)


@pytest.fixture(scope="module")
def rewrite_output(ray_cluster, tmp_path_factory, rewrite_flags):  # noqa: F811
    root = tmp_path_factory.mktemp("report")
    (root / "in").mkdir()
    (root / "in" / "part-0.parquet").write_bytes(table_bytes(PAIRS[:3]))
    (root / "in" / "part-1.parquet").write_bytes(table_bytes([
        {"key": "d", "raw_prompt": "a fox", "prompt": "a fox in a misty forest, oil on canvas"},
        {"key": "e", "raw_prompt": "a robot", "prompt": "a robot, octane render, 8k"}]))
    args = ["eval", "rewrite", "--input", str(root / "in"), "--output", str(root / "out"), *rewrite_flags]
    assert main(args) == 0
    return root, args


def test_rerun_of_a_finished_eval_rewrite_does_nothing(rewrite_output, capsys):
    root, args = rewrite_output
    before = {p.name: p.stat().st_mtime_ns for p in (root / "out" / "rows").iterdir()}
    assert main(args) == 0
    assert "2 already done, 0 to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (root / "out" / "rows").iterdir()} == before


def test_report_page_and_contact_sheet(rewrite_output, tmp_path, capsys):
    root, _ = rewrite_output
    rows = pd.read_parquet(root / "out" / "rows")
    assert main(["report", str(root / "out"), "--output", str(tmp_path / "r.html")]) == 0
    assert "4 of 4 rows of eval-rewrite" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    for prompt in rows["prompt"]:
        assert prompt in page
    assert page.count("<img ") == 8 and "pick_score.rewritten_minus_raw" in page and "empty raw_prompt: 1" in page
    # rows sorted by pick_score, descending, by default
    keys = re.findall(r"<tr><td>([a-e])</td>", page)
    assert keys == list(rows.sort_values("pick_score", ascending=False)["key"])
    # the embedded images are the rows' own thumbnails
    first = re.search(r'src="data:image/jpeg;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(first) == rows.sort_values("pick_score", ascending=False)["raw_image"].iloc[0]

    sheet = Image.open(tmp_path / "r.png")
    assert sheet.width > 2 * 128 and sheet.height > 4 * 128
    # the first cell (label "raw prompt", top left) holds the top row's raw image, enlarged to 128 px
    top = rows.sort_values("pick_score", ascending=False).iloc[0]
    thumb = Image.open(io.BytesIO(top["raw_image"])).convert("RGB").resize((128, 128), Image.NEAREST)
    cell = sheet.crop((8, 8 + 16, 8 + 128, 8 + 16 + 128))
    assert np.abs(np.asarray(cell, dtype=int) - np.asarray(thumb, dtype=int)).mean() < 2


def test_report_limit_and_sort_flags(rewrite_output, tmp_path):
    root, _ = rewrite_output
    assert main(["report", str(root / "out"), "--output", str(tmp_path / "r.html"), "--limit", "2",
                 "--sort", "raw_aesthetic_score"]) == 0
    rows = pd.read_parquet(root / "out" / "rows").sort_values("raw_aesthetic_score", ascending=False)
    page = (tmp_path / "r.html").read_text()
    assert re.findall(r"<tr><td>([a-e])</td>", page) == list(rows["key"][:2]) and "2 of 4 rows" in page
    assert (tmp_path / "r.png").exists()


def test_report_errors_are_one_line(tmp_path, rewrite_output, capsys):
    root, _ = rewrite_output
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no rows/ folder" in capsys.readouterr().err
    assert main(["report", str(root / "out"), "--sort", "nope", "--output", str(tmp_path / "x.html")]) == 2
    assert "--sort 'nope': no such column" in capsys.readouterr().err


def test_mining_report_shows_each_target_and_its_regenerated_image(ray_cluster, tmp_path, capsys):
    """A mine output's report reads each target image back from the input shards by key, and with
    --generator world shows the image each prompt regenerates beside it."""
    from pipelines.io.samples import write_sample_shards

    write_sample_shards(tmp_path / "in", shards=1, per_shard=3, size=48)
    assert main(["mine", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "mined"), "--steps", "3",
                 "--prompt-len", "4", "--batch-size", "4", "--actors", "1"]) == 0
    assert main(["report", str(tmp_path / "mined"), "--generator", "world"]) == 0
    assert "3 of 3 rows of mine" in capsys.readouterr().out
    page = (tmp_path / "mined" / "report.html").read_text()
    assert page.count("<img ") == 6  # a target and a regenerated image per row
    rows = pd.read_parquet(tmp_path / "mined" / "rows")
    for prompt in rows["prompt"]:
        assert html.escape(prompt) in page
    sheet = Image.open(tmp_path / "mined" / "report.png")
    assert sheet.width > 2 * 128 and sheet.height > 3 * 100
    assert main(["report", str(tmp_path / "mined"), "--generator", str(tmp_path / "no-such-model"),
                 "--output", str(tmp_path / "x.html")]) == 2
    assert "cannot load text-to-image model" in capsys.readouterr().err

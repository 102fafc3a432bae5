"""Done markers are tied to their input: a shard replaced under the same name is redone (or the run
refused with --on-changed refuse), and the manifest compares locations, not spellings."""

import json
import os

import pandas as pd

from pipelines.cli import main
from pipelines.io.samples import sample_records, webdataset_bytes

FAST = ["--steps", "3", "--prompt-len", "4", "--batch-size", "4", "--actors", "1"]


def test_replaced_shard_is_redone_or_refused_and_paths_are_normalised(ray_cluster, tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    for s in range(2):
        (tmp_path / "in" / f"{s:05d}.tar").write_bytes(webdataset_bytes(sample_records(s, 2, size=32)))
    monkeypatch.chdir(tmp_path)
    assert main(["mine", "--input", "./in", "--output", "out", *FAST]) == 0
    capsys.readouterr()

    # the same folder spelt another way is the same job
    assert main(["mine", "--input", str(tmp_path / "in") + "/", "--output", str(tmp_path / "out"), *FAST]) == 0
    assert "2 already done, 0 to do" in capsys.readouterr().out
    # run again, a finished job writes nothing at all (no lease, no summary, no marker)
    files = lambda: {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "out").rglob("*")}  # noqa: E731
    before = files()
    assert main(["mine", "--input", "in", "--output", "out", *FAST]) == 0
    assert files() == before and "nothing to do" in capsys.readouterr().out

    # shard 00001 replaced by other images under the same name: redone by default, and said so
    (tmp_path / "in" / "00001.tar").write_bytes(webdataset_bytes(sample_records(7, 3, size=32)))
    assert main(["mine", "--input", "in", "--output", "out", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "1 already done, 1 to do" in printed and "1 shard changed since they were done: redone (00001)" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["changed_redone"] == ["00001"] and "1 changed since done and redone" in printed
    rows = pd.read_parquet(tmp_path / "out" / "rows")
    assert sorted(rows["key"]) == ["000000000", "000000001", "000070000", "000070001", "000070002"]

    # the same bytes touched: refused with --on-changed refuse, nothing rewritten
    marker = (tmp_path / "out" / "stats" / "00001_stats.json").read_text()
    st = os.stat(tmp_path / "in" / "00001.tar")
    os.utime(tmp_path / "in" / "00001.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert main(["mine", "--input", "in", "--output", "out", *FAST, "--on-changed", "refuse"]) == 2
    err = capsys.readouterr().err
    assert "1 shard changed since they were done (00001)" in err and "--on-changed redo" in err
    assert (tmp_path / "out" / "stats" / "00001_stats.json").read_text() == marker


def test_output_mined_before_a_setting_existed_resumes_at_its_old_value(ray_cluster, tmp_path, capsys):
    """A manifest written before `method` existed resumes with the default method and is refused with
    another (catches: setting_defaults ignored, or applied to values that differ)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(webdataset_bytes(sample_records(0, 2, size=32)))
    args = ["mine", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *FAST]
    assert main(args) == 0
    manifest = tmp_path / "out" / "_job.json"
    old = json.loads(manifest.read_text())
    for key in ("method", "langevin_noise"):
        del old["settings"][key]
    manifest.write_text(json.dumps(old))
    capsys.readouterr()
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out
    assert main([*args, "--method", "autoprompt-sgd"]) == 2
    assert "settings.method: 'pez' there vs 'autoprompt-sgd' now" in capsys.readouterr().err

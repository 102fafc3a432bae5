"""Shard discovery and record reading (no Ray): the formats as img2dataset and Hugging Face write them."""

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pez_core import ImageError
from pipelines.jobs.progress import Progress
from pipelines.io.samples import sample_jpeg, sample_records, webdataset_bytes
from pipelines.io.shards import ShardError, decode_record, find_shards, read_shard
from pipelines.io.storage import Location


def _records(shard):
    return list(read_shard(shard, Location(shard.uri)))


def test_discovery_follows_img2dataset_layout(tmp_path):
    (tmp_path / "part1").mkdir()
    (tmp_path / "part1" / "00000.tar").write_bytes(webdataset_bytes(sample_records(0, 1, size=32)))
    (tmp_path / "part1" / "00000.parquet").write_bytes(b"img2dataset metadata, not a shard")
    (tmp_path / "part1" / "00000_stats.json").write_text("{}")
    (tmp_path / "part1" / "_SUCCESS").write_text("")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(sample_jpeg(1, 32))
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"x")
    shards = find_shards(Location(str(tmp_path)))
    assert [(s.id, s.format) for s in shards] == [("part1/00000", "webdataset"), ("photos", "folder")]
    assert find_shards(Location(str(tmp_path)), "folder")[0].id == "photos"
    # asked for explicitly, the Parquet file is a shard (its reader then says what is missing)
    assert [s.id for s in find_shards(Location(str(tmp_path)), "parquet")] == ["part1/00000"]
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "notes.json").write_text("{}")
    with pytest.raises(ShardError, match="no WebDataset tars, Parquet files or images"):
        find_shards(Location(str(tmp_path / "meta")))


def test_tar_records_group_members_and_flag_duplicates(tmp_path):
    buf = io.BytesIO()
    members = [("k1.jpg", sample_jpeg(1, 32)), ("k1.json", b'{"caption": "from json"}'),
               ("k2.txt", b"caption only"), ("k1.jpg", sample_jpeg(2, 32))]  # k1 again, not adjacent
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    [shard] = find_shards(Location(str(tmp_path)))
    recs = _records(shard)
    assert [(r["key"], r["caption"], r["error"]) for r in recs] == [
        ("k1", "from json", None), ("k2", "caption only", "no image member (has: txt)"),
        ("k1", None, "duplicate key in shard (first occurrence kept)")]
    assert decode_record(recs[0]).size == (32, 32)
    with pytest.raises(ImageError, match="no image member"):
        decode_record(recs[1], shard.id)


def test_parquet_with_hugging_face_image_struct_and_no_key_column(tmp_path):
    images = pa.array([{"bytes": sample_jpeg(3, 32), "path": "a.jpg"}, {"bytes": None, "path": None}],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "caption": ["one", "two"]}), tmp_path / "hf.parquet")
    [shard] = find_shards(Location(str(tmp_path)))
    recs = _records(shard)
    assert [r["key"] for r in recs] == ["hf/000000000", "hf/000000001"]
    assert recs[0]["error"] is None and recs[1]["error"] == "no image bytes"
    pq.write_table(pa.table({"url": ["u"]}), tmp_path / "hf.parquet")
    with pytest.raises(ShardError, match="no image-bytes column"):
        _records(shard)


def test_progress_eta_from_bytes():
    p = Progress("mine", total_shards=4, total_bytes=400, interval=1e9, stream=io.StringIO())
    p.started -= 10  # ten seconds in
    p.update(records=50, rejects=2, size=100)
    assert p.eta() == pytest.approx(30, rel=0.05) and "1/4 shards" in p.line() and "(2 rejected)" in p.line()

"""Pair data: quality heuristics, cleaning, rule / LLM summarisers, captioner pairs, Parquet output.

The LLM summariser talks real HTTP to a small OpenAI-compatible server on 127.0.0.1 run by the test.
"""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pez_core.rewrite.clean import CleanConfig, PairCleaner, non_english_reason, normalise
from pez_core.rewrite.data import PairConfig, build_pairs, read_prompt_table, write_pairs
from pez_core.rewrite.quality import classify, count_weights, prompt_features, strip_weights
from pez_core.rewrite.summarise import LLMConfig, LLMSummariser, RuleSummariser, SummariserError

HIGH = [
    "portrait of an elven princess in a forest, highly detailed, digital painting, artstation, concept art, "
    "sharp focus, illustration, art by greg rutkowski and alphonse mucha",
    "(masterpiece:1.2), best quality, a lighthouse on a cliff at sunset, [blurry], 8k, octane render, "
    "volumetric lighting",
    "a cyberpunk city street at night with neon signs, cinematic lighting, unreal engine 5, "
    "trending on artstation, 4k",
    "a red fox in the snow by Hiroshige, ((intricate)), {sharp focus}, matte painting, 8k resolution",
]
LOW = ["a cat in the rain", "a dog", "my house"]
MID = ["a castle, a hill, morning, fog", "a very long description of a quiet harbour town with boats and gulls "
       "and old stone houses along the water under a grey sky"]


# --- quality heuristics -----------------------------------------------------------------------------

def test_weight_syntax_is_counted_and_stripped():
    text = "(red:1.3) cat, ((big)), [blurry], {shiny}, castle::1.5"
    assert count_weights(text) == 5
    assert strip_weights(text) == "red cat, big, blurry, shiny, castle"
    assert strip_weights("((a (nested:1.2) cat))") == "a nested cat"


def test_quality_split_follows_the_documented_rules():
    assert [classify(p) for p in HIGH] == ["high"] * 4
    assert [classify(p) for p in LOW] == ["low"] * 3
    assert [classify(p) for p in MID] == ["mid", "mid"]  # a short tag list without modifiers; long but plain
    f = prompt_features(HIGH[1])
    assert (f.weights, f.modifiers) == (2, 5)  # (masterpiece:1.2), [blurry]; best quality, 8k, octane, ...


# --- cleaning ---------------------------------------------------------------------------------------

def test_non_english_filter():
    assert non_english_reason("a cat in the rain, highly detailed") is None
    assert "CJK" in non_english_reason("一只猫在雨中, highly detailed")
    assert "Cyrillic" in non_english_reason("кошка под дождём") or "CYRILLIC" in non_english_reason("кошка под дождём")
    assert "function words" in non_english_reason("un chat dans la rue avec le chien")
    assert non_english_reason("a cafe in paris") is None  # a few French-looking words are fine


def test_pair_cleaner_reasons_and_dedupe():
    c = PairCleaner(CleanConfig(min_pick_score=18.5, extra_blocklist=frozenset({"clown"})))
    good = "a cat in a garden, highly detailed, digital painting"
    assert c.reason("a cat", good, pick_score=19.0) is None
    assert c.reason("A cat!", "(a cat:1.1) in a garden, highly  detailed, digital painting", 19.0) == "duplicate pair"
    assert c.reason("a cat", good + ", nsfw", 19.0) == "prompt NSFW word 'nsfw'"
    assert c.reason("a scary clown", "a scary clown at a fair, highly detailed", 19.0) == "raw_prompt NSFW word 'clown'"
    assert c.reason("a cat", "a cat, artstation, 8k, octane render", 17.0) == "pick_score 17.0 < 18.5"
    assert c.reason("a cat", "a cat, artstation, 8k, octane render", None).startswith("pick_score None")
    assert c.reason("a cat", "short", 19.0).startswith("prompt length 5 outside")
    assert c.reason("a" * 200, good, 19.0).startswith("raw_prompt length 200 outside")
    assert normalise("(A cat:1.2),  [dog]!") == "a cat dog"
    # 'sexton' contains 'sex' but is another word: whole-word matching keeps it
    assert c.reason("a sexton", "a sexton in an old church, highly detailed, 8k", 19.0) is None


# --- summarisers ------------------------------------------------------------------------------------

def test_rule_summariser_keeps_the_subject():
    s = RuleSummariser()
    assert s.summarise(HIGH) == [
        "portrait of an elven princess in a forest",
        "a lighthouse on a cliff at sunset",
        "a cyberpunk city street at night with neon signs",
        "a red fox in the snow",
    ]
    assert RuleSummariser(max_words=3).summarise_one(HIGH[0]) == "portrait of an"


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: answers 'summary of <first 3 words>'; behaviour set on the server."""

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            fail = srv.fail_next > 0
            srv.fail_next -= fail
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": "not found"})
        if fail:
            return self._send(503, {"error": "busy"})
        if srv.expected_key and self.headers.get("Authorization") != f"Bearer {srv.expected_key}":
            return self._send(401, {"error": {"message": "bad key"}})
        user = body["messages"][-1]["content"]
        if "Expand" in body["messages"][0]["content"]:  # LLMExpander's instruction
            answer = "" if "EMPTY" in user else f"{user}, highly detailed, digital painting, artstation, 8k"
        else:
            answer = "" if "EMPTY" in user else f'"summary of {" ".join(user.split()[:3]).rstrip(",")}"'
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_llm():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    srv.requests, srv.fail_next, srv.expected_key, srv.lock = [], 0, "sk-test-SECRET-42", threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_llm_summariser_against_a_local_openai_compatible_server(fake_llm, monkeypatch, caplog):
    monkeypatch.setenv("MY_LLM_KEY", fake_llm.expected_key)
    caplog.set_level(logging.DEBUG)
    fake_llm.fail_next = 1  # the first request gets a 503 and is retried
    cfg = LLMConfig(base_url=fake_llm.url, model="tiny-chat", api_key_env="MY_LLM_KEY", backoff_s=0.01,
                    concurrency=2)
    assert cfg.base_url == fake_llm.url + "/v1"  # a bare host means the usual /v1 root
    with LLMSummariser(cfg) as s:
        out = s.summarise(HIGH[:3])
        assert fake_llm.expected_key not in repr(s)
    assert out == ["summary of portrait of an", "summary of (masterpiece:1.2), best quality",
                   "summary of a cyberpunk city"]  # in input order, quotes stripped
    assert len(fake_llm.requests) == 4
    req = fake_llm.requests[-1]
    assert req["auth"] == f"Bearer {fake_llm.expected_key}" and req["body"]["model"] == "tiny-chat"
    assert req["body"]["messages"][0]["role"] == "system" and "12 words" in req["body"]["messages"][0]["content"]
    assert fake_llm.expected_key not in caplog.text


def test_llm_summariser_errors_are_clear_and_keep_the_key_secret(fake_llm, monkeypatch, caplog):
    monkeypatch.setenv("MY_LLM_KEY", "sk-wrong-SECRET")
    caplog.set_level(logging.DEBUG)
    s = LLMSummariser(LLMConfig(base_url=fake_llm.url + "/v1", api_key_env="MY_LLM_KEY", retries=0))
    with pytest.raises(SummariserError, match=r"/v1/chat/completions: HTTP 401") as e:
        s.summarise(["a cat"])
    assert "SECRET" not in str(e.value) and "SECRET" not in caplog.text
    # a dead endpoint: connection refused, retried, then a clear error
    dead = LLMSummariser(LLMConfig(base_url="http://127.0.0.1:9/v1", retries=1, backoff_s=0.01, timeout_s=2))
    with pytest.raises(SummariserError, match=r"connection failed .* \(2 attempts\)"):
        dead.summarise(["a cat"])
    # on_error=skip: failures become empty summaries (dropped later as rejects), counted
    fake_llm.fail_next = 10
    monkeypatch.setenv("MY_LLM_KEY", fake_llm.expected_key)
    skip = LLMSummariser(LLMConfig(base_url=fake_llm.url, api_key_env="MY_LLM_KEY", retries=1, backoff_s=0.01,
                                   on_error="skip", concurrency=1))
    assert skip.summarise(["a cat", "a dog"]) == ["", ""] and skip.failures == 2
    with pytest.raises(ValueError, match="not an http"):
        LLMConfig(base_url="ftp://x")


# --- building pairs ---------------------------------------------------------------------------------

def synthetic_table() -> pd.DataFrame:
    prompts = HIGH + [HIGH[0]] * 3 + LOW + MID + [
        "一只猫在雨中, highly detailed, digital painting, artstation, concept art, sharp focus, 8k",
        "a nude woman on a beach, highly detailed, digital painting, artstation, concept art, sharp focus",
        "a haunted house on a hill in the fog, highly detailed, matte painting, artstation, 8k",
    ]
    n = len(prompts)
    return pd.DataFrame({
        "prompt": prompts,
        "pick_score": [20.0 + i / 10 for i in range(n)],
        "aesthetic_score": [6.0] * n,
        "prompt_nsfw": [0.0] * (n - 1) + [0.9],  # DiffusionDB flags the last row
        "image_name": [f"{i}.png" for i in range(n)],
    })


def test_build_pairs_with_the_rule_summariser(tmp_path):
    table = synthetic_table()
    result = build_pairs(table, PairConfig(), summariser=RuleSummariser())
    s = result.stats
    assert s.rows_read == len(table) and s.quality["high"] == 9 and s.quality["low"] == 3
    assert s.high_unique == 6  # duplicates of HIGH[0] and the flagged row are gone
    assert list(result.pairs.columns) == ["raw_prompt", "prompt", "source", "pick_score", "aesthetic_score"]
    assert result.pairs["raw_prompt"].tolist() == [
        "portrait of an elven princess in a forest", "a lighthouse on a cliff at sunset",
        "a cyberpunk city street at night with neon signs", "a red fox in the snow"]
    assert result.pairs["prompt"].tolist() == HIGH and set(result.pairs["source"]) == {"summary"}
    assert result.pairs["pick_score"].tolist() == [20.0, 20.1, 20.2, 20.3]  # scores of each prompt's row
    reasons = result.rejects["reason"].tolist()
    assert "prompt_nsfw 0.9 > 0.5" in reasons and "raw_prompt NSFW word 'nude'" in reasons
    assert any(r.startswith("raw_prompt non-English") for r in reasons)
    path = write_pairs(result.pairs, tmp_path / "out" / "pairs.parquet")
    assert pq.read_table(path).column_names[:2] == ["raw_prompt", "prompt"]
    assert read_prompt_table(path)["prompt"].tolist() == HIGH


def test_pairs_file_splits_into_row_group_shards(tmp_path):
    """write_pairs keeps row groups small, so one pairs file spreads over several actors with
    `label --rows-per-shard N` (one row group of 1M rows made a 9,860-pair file one shard)."""
    from pipelines.io.prompt_tables import find_tables
    from pipelines.io.storage import StorageOptions

    pairs = pd.DataFrame({"raw_prompt": [f"a star {i}" for i in range(25)], "prompt": ["a red star"] * 25})
    path = write_pairs(pairs, tmp_path / "pairs.parquet", row_group_size=10)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    shards = find_tables(StorageOptions().resolve(str(path)), "parquet", rows_per_shard=10)
    assert [s.id for s in shards] == ["pairs@00000", "pairs@00001", "pairs@00002"]
    many = pd.concat([pairs] * 100, ignore_index=True)  # 2,500 rows: row groups of 1,000 by default
    assert pq.ParquetFile(write_pairs(many, tmp_path / "default.parquet")).metadata.num_row_groups == 3


class FakeCaptioner:
    """Implements the Captioner protocol: 'a photo of <colour>' from the image's mean colour."""

    def __init__(self):
        self.calls = []

    def caption(self, images):
        self.calls.append(len(images))
        out = []
        for im in images:
            r, g, b = im.convert("RGB").resize((1, 1)).getpixel((0, 0))
            out.append("a photo of " + max((r, "red"), (g, "green"), (b, "blue"))[1] + " things")
        return out


def test_build_pairs_with_a_captioner_and_bad_images(tmp_path):
    from PIL import Image

    table = synthetic_table()
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not an image")
    cfg = PairConfig(summarise=False, caption=True, image_column="image_name", image_root=str(tmp_path),
                     batch_size=2)
    cap = FakeCaptioner()
    result = build_pairs(table, cfg, captioner=cap)
    assert result.pairs["raw_prompt"].tolist() == ["a photo of red things", "a photo of green things",
                                                   "a photo of blue things"]
    assert result.pairs["prompt"].tolist() == HIGH[:3] and set(result.pairs["source"]) == {"caption"}
    assert max(cap.calls) <= 2  # batched by batch_size
    errors = result.rejects[result.rejects["reason"].str.startswith("image error")]["reason"].tolist()
    assert any("3.png" in e and "not an image" in e for e in errors)
    assert any("no such file" in e for e in errors)
    assert result.stats.rejected["image error"] == len(errors)


def test_given_pairs_are_cleaned_only():
    table = pd.DataFrame({"raw_prompt": ["a cat", "a cat", "ein Hund", "x"],
                          "prompt": ["a cat, highly detailed, artstation"] * 2
                          + ["ein Hund und eine Katze mit einem Hut, artstation", "x, 8k, artstation, octane"],
                          "pick_score": [19.0, 19.0, 19.0, 17.0]})
    result = build_pairs(table, PairConfig(clean=CleanConfig(min_pick_score=18.5)))
    assert result.pairs[["raw_prompt", "source"]].values.tolist() == [["a cat", "given"]]
    assert sorted(result.stats.rejected) == ["duplicate pair", "prompt non-English", "raw_prompt length outside"]


def test_pairs_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no 'text' column; columns: \\['prompt'"):
        build_pairs(pd.DataFrame({"prompt": ["a"]}), PairConfig(prompt_column="text"), summariser=RuleSummariser())
    with pytest.raises(ValueError, match="nothing makes pairs"):
        build_pairs(pd.DataFrame({"prompt": ["a"]}), PairConfig())
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_prompt_table(tmp_path / "missing.parquet")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown table format '.txt'"):
        read_prompt_table(tmp_path / "t.txt")

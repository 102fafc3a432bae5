"""The single-machine PEZ commands through the console script's main()."""

import json

import pytest

from pipelines.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from pipelines.io.samples import write_sample_images

    folder = tmp_path_factory.mktemp("imgs")
    paths = write_sample_images(folder, 2)
    (folder / "notes.txt").write_text("not an image")
    (folder / "truncated.png").write_bytes(paths[0].read_bytes()[:300])
    return folder, paths


def _json_out(capsys):
    out = capsys.readouterr().out
    return json.loads(out)


def test_invert_json_one_prompt_per_image(images, capsys, tiny_clip):
    folder, paths = images
    assert main(["invert", *map(str, paths), "--steps", "20", "--prompt-len", "6", "--json"]) == 0
    rows = _json_out(capsys)
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    for r in rows:
        # the world preset's default fluency prior adds the prompt's NLL under the world prompt LM
        assert set(r) == {"image", "prompt", "token_ids", "cosine", "best_step", "steps_run", "nll", "polish_moves"}
        assert r["nll"] > 0 and r["polish_moves"] >= 0
        assert len(r["token_ids"]) == 6 and tiny_clip.tokenize(r["prompt"]) == r["token_ids"]
        assert -1 <= r["cosine"] <= 1 and r["steps_run"] == 20


def test_invert_shared_gives_one_prompt(images, capsys):
    _, paths = images
    assert main(["invert", *map(str, paths), "--shared", "--steps", "10", "--prompt-len", "4", "--json"]) == 0
    [row] = _json_out(capsys)
    assert row["images"] == [str(p) for p in paths]


def test_invert_plain_output_and_ban(images, capsys):
    _, paths = images
    assert main(["invert", str(paths[0]), "--steps", "15", "--ban-substring", "a", "--ban-substring", "o"]) == 0
    line = capsys.readouterr().out.strip()
    path, cosine, prompt = line.split("\t")
    assert path == str(paths[0]) and cosine.startswith("cosine=")
    assert "a" not in prompt and "o" not in prompt and prompt


def test_invert_allow_file(images, tmp_path, capsys):
    _, paths = images
    bank = tmp_path / "bank.txt"
    bank.write_text("painting\nsunset\nportrait\nforest\n")
    assert main(["invert", str(paths[0]), "--steps", "10", "--allow-file", str(bank), "--json"]) == 0
    [row] = _json_out(capsys)
    assert set(row["prompt"].split()) <= {"painting", "sunset", "portrait", "forest"}


@pytest.mark.parametrize("name, reason", [
    ("missing.png", "no such file"), ("notes.txt", "not an image"), ("truncated.png", "truncated"),
])
def test_invert_bad_input_names_the_file_and_reason(images, capsys, name, reason):
    folder, paths = images
    bad = folder / name
    assert main(["invert", str(paths[0]), str(bad), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and reason in err


def test_invert_bad_flag_value_is_a_clear_error(images, capsys):
    _, paths = images
    assert main(["invert", str(paths[0]), "--prompt-len", "0"]) == 2
    assert "prompt_len" in capsys.readouterr().err


def test_distill_json(capsys, tiny_clip):
    long_prompt = "a highly detailed oil painting of a lighthouse on a cliff at sunset, dramatic lighting"
    assert main(["distill", long_prompt, "--prompt-len", "5", "--steps", "30", "--json"]) == 0
    row = _json_out(capsys)
    assert row["source_tokens"] == len(tiny_clip.tokenize(long_prompt))
    assert row["ratio"] == round(5 / row["source_tokens"], 4) and len(row["token_ids"]) == 5
    assert row["cosine"] > 0.5  # the tiny model's text features of a 5-token prompt come close


def test_concat(capsys):
    assert main(["concat", "oil painting", "lighthouse at dusk"]) == 0
    assert capsys.readouterr().out.strip() == "oil painting lighthouse at dusk"
    assert main(["concat", " ".join(["word"] * 50), " ".join(["word"] * 30)]) == 2
    assert "80 tokens" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "invert" in out and "distill" in out

"""The PEZ paper's baselines as methods of the same batched loop (PEZConfig.method, --method)."""

import json

import pytest
import torch

from pez_core import PEZConfig, image_target, invert, invert_stream, load_clip
from pipelines.cli import main
from pipelines.io.samples import make_sample_image


@pytest.fixture(scope="module")
def world(one_torch_thread_module):
    clip = load_clip("world")
    targets = [image_target(clip, [make_sample_image(1000 + i)], seed=i) for i in range(3)]
    return clip, targets


def _run(clip, targets, **kw):
    return invert(clip, targets, PEZConfig(steps=kw.pop("steps", 40), prompt_len=kw.pop("prompt_len", 6), **kw))


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="method must be one of pez, autoprompt-sgd"):
        PEZConfig(method="autoprompt")
    with pytest.raises(ValueError, match="langevin_noise"):
        PEZConfig(langevin_noise=-1)


@pytest.mark.parametrize("method", ["autoprompt-sgd", "fluentprompt"])
def test_projecting_methods_keep_a_hard_prompt_after_every_update(world, method):
    """Catches: the projection after the update removed (the method would silently be PEZ, whose
    continuous prompt leaves the token table after its first step)."""
    clip, targets = world
    table = clip.token_embedding.detach().float()
    off_table = []
    stream = invert_stream(clip, targets, PEZConfig(steps=15, prompt_len=4, method=method), slots=3)

    def check(step, occupied):
        p = stream.slots.prompts[:occupied].reshape(-1, table.shape[1])
        off_table.append(float(torch.cdist(p, table).min(dim=1).values.max()))

    stream.on_step = check
    results = [r for _, r in stream]
    assert len(results) == 3 and len(off_table) == 15
    assert max(off_table) < 1e-5
    pez = invert_stream(clip, targets, PEZConfig(steps=3, prompt_len=4), slots=3)
    pez_off = []
    pez.on_step = lambda s, o: pez_off.append(
        float(torch.cdist(pez.slots.prompts[:o].reshape(-1, table.shape[1]), table).min(dim=1).values.max()))
    list(pez)
    assert max(pez_off) > 1e-3  # the test can tell the two apart


def test_fluentprompt_noise_is_per_target_and_zero_noise_is_autoprompt(world):
    """Catches: the Langevin noise removed, or drawn from a shared generator (results would then depend
    on the batch)."""
    clip, targets = world
    noisy = _run(clip, targets, method="fluentprompt", langevin_noise=2.0, early_stop=False)
    again = _run(clip, targets, method="fluentprompt", langevin_noise=2.0, early_stop=False)
    alone = _run(clip, targets[1:2], method="fluentprompt", langevin_noise=2.0, early_stop=False)
    auto = _run(clip, targets, method="autoprompt-sgd", early_stop=False)
    quiet = _run(clip, targets, method="fluentprompt", langevin_noise=0.0, early_stop=False)
    assert [r.token_ids for r in noisy] == [r.token_ids for r in again]
    assert alone[0].token_ids == noisy[1].token_ids
    assert [r.token_ids for r in quiet] == [r.token_ids for r in auto]
    assert [r.token_ids for r in noisy] != [r.token_ids for r in auto]


def test_soft_prompt_has_no_text_and_beats_its_own_projection(world):
    """A soft prompt is the relaxation: on its own CLIP it scores above the hard prompt of its nearest
    tokens. Catches: a projection left in the soft loop (the two cosines would coincide)."""
    clip, targets = world
    soft = _run(clip, targets, method="soft", steps=60)
    for r in soft:
        assert r.text == "" and r.token_ids == [] and r.extra["soft"] is True
        emb = torch.tensor(r.extra["embedding"])
        assert emb.shape == (6, clip.token_embedding.shape[1])
        assert clip.tokenize(r.extra["nearest_text"]) == r.extra["nearest_ids"]
        assert r.cosine > r.extra["nearest_cosine"] + 0.05
        # the reported cosine is the embedding's own
        feats = torch.nn.functional.normalize(clip.encode_embeds(emb[None]), dim=-1)
        assert float(feats[0] @ targets[soft.index(r)].features[0]) == pytest.approx(r.cosine, abs=1e-4)


def test_cli_method_flag(tmp_path, capsys):
    path = tmp_path / "a.png"
    make_sample_image(3).save(path)
    assert main(["invert", str(path), "--method", "soft", "--steps", "10", "--prompt-len", "4", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["soft"] is True and row["prompt"] == "" and len(row["embedding"]) == 4
    assert row["nearest_prompt"] and -1 <= row["nearest_cosine"] <= 1
    assert main(["invert", str(path), "--method", "autoprompt-sgd", "--steps", "10", "--prompt-len", "4"]) == 0
    assert "cosine=" in capsys.readouterr().out


def test_mine_refuses_soft_prompts(tmp_path, capsys):
    assert main(["mine", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--method", "soft"]) == 2
    assert "--method soft" in capsys.readouterr().err

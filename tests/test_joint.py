"""One prompt for two text encoders (SDXL's design), with the shipped world CLIPs standing in for the pair."""

import json

import pytest
import torch
import torch.nn.functional as F

from pez_core import PRESETS, PEZConfig, Vocabulary, image_target, invert, load_clip
from pez_core.joint import JointClip


@pytest.fixture(scope="module")
def pair():
    return load_clip("world", device="cpu"), load_clip("world-ref", device="cpu")  # text widths 128 and 96


@pytest.fixture(scope="module")
def joint(pair):
    return JointClip(list(pair), "world+world-ref")


def test_joint_cosine_is_the_mean_of_the_encoders_cosines(pair, joint, sample_images):
    a, b = pair
    assert joint.token_embedding.shape == (49408, 128 + 96) and joint.part_widths == (128, 96)
    ids = torch.tensor([joint.tokenize("small red heart on a blue background")])
    image = joint.encode_images(sample_images[:1])[0]
    text = joint.encode_ids(ids)[0]
    cos_a = float(a.encode_ids(ids)[0] @ a.encode_images(sample_images[:1])[0])
    cos_b = float(b.encode_ids(ids)[0] @ b.encode_images(sample_images[:1])[0])
    assert abs(float(text @ image) - (cos_a + cos_b) / 2) < 1e-5
    # the differentiable path PEZ uses gives the same features as the per-encoder encoders
    embeds = joint.token_embedding[ids]
    assert torch.allclose(F.normalize(joint.encode_embeds(embeds), dim=-1), text, atol=1e-5)
    scores = joint.encoder_cosines(ids[0].tolist(), image[None], torch.ones(1))
    assert scores == pytest.approx({"world": cos_a, "world-ref": cos_b}, abs=1e-5)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_projection_maximises_the_sum_of_the_encoders_cosines(joint, mode):
    from pez_core.world.grammar import FUNCTION_WORDS, WORDS

    vocab = Vocabulary(joint, allow=sorted(WORDS | FUNCTION_WORDS), projection=mode)  # the world's trained rows
    gen = torch.Generator().manual_seed(0)
    pick = torch.randint(len(vocab), (2, 300), generator=gen)  # each encoder's half near another token
    rows = torch.cat([vocab.table[pick[0], :128], vocab.table[pick[1], 128:]], dim=-1)
    q = rows + rows.std(dim=0) * torch.randn(rows.shape, generator=gen)  # (300, 224)
    t1, t2 = vocab.table.split([128, 96], dim=-1)
    q1, q2 = q.split([128, 96], dim=-1)
    c1 = F.normalize(q1, dim=-1) @ F.normalize(t1, dim=-1).T
    c2 = F.normalize(q2, dim=-1) @ F.normalize(t2, dim=-1).T
    want = vocab.ids[(c1 + c2).argmax(dim=-1)]
    got = vocab.project(q[:, None])[:, 0]
    assert (got == want).float().mean() >= (0.99 if mode == "fast" else 1.0)
    # the test can tell: one encoder alone, or the cosine of the concatenation, pick other tokens
    for other in (c1, c2, F.normalize(q, dim=-1) @ F.normalize(vocab.table, dim=-1).T):
        assert (vocab.ids[other.argmax(dim=-1)] != want).sum() >= 10


def test_joint_prompt_scores_on_both_encoders(pair, joint, sample_images):
    from pez_core.world.grammar import FUNCTION_WORDS, WORDS

    cfg = PEZConfig(prompt_len=8, steps=40, allow=sorted(WORDS | FUNCTION_WORDS))  # the world's trained words
    images = sample_images[:3]
    single = {c.name: invert(c, [image_target(c, [im], seed=i) for i, im in enumerate(images)], cfg) for c in pair}
    both = invert(joint, [image_target(joint, [im], seed=i) for i, im in enumerate(images)], cfg)
    for c, other in [(pair[0], pair[1]), (pair[1], pair[0])]:
        feats = c.encode_images(images)

        def score(results, c=c, feats=feats):
            return sum(float(c.encode_ids(torch.tensor([r.token_ids]))[0] @ f) for r, f in zip(results, feats)) / 3

        joint_on_c = sum(r.extra["encoders"][c.name] for r in both) / 3
        assert joint_on_c == pytest.approx(score(both), abs=1e-4)
        assert joint_on_c > score(single[other.name])  # beats the other encoder's own prompt on this one
        assert joint_on_c > 0.8 * score(single[c.name])
    assert all(r.cosine == pytest.approx(sum(r.extra["encoders"].values()) / 2, abs=1e-4) for r in both)


def test_cli_joint_model_reports_each_encoder(tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.io.samples import write_sample_images

    [image] = write_sample_images(tmp_path, 1)
    assert main(["invert", str(image), "--model", "world+world-ref", "--steps", "5", "--prompt-len", "4",
                 "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert set(row["encoders"]) == {"world", "world-ref"}
    assert row["cosine"] == pytest.approx(sum(row["encoders"].values()) / 2, abs=1e-4)
    assert main(["invert", str(image), "--model", "world+world-ref", "--steps", "5", "--prompt-len", "4"]) == 0
    path, cosine, _prompt = capsys.readouterr().out.strip().split("\t")
    assert path == str(image) and cosine.startswith("cosine=") and " (world=" in cosine and "world-ref=" in cosine


def test_sdxl_preset_joins_its_two_encoders(monkeypatch):
    import pez_core.clip as clip_module

    assert PRESETS["sdxl"].parts == ("sd15", "sdxl-g")
    assert (PRESETS["sd15"].model, PRESETS["sd15"].pretrained) == ("ViT-L-14", "openai")
    assert (PRESETS["sdxl-g"].model, PRESETS["sdxl-g"].pretrained) == ("ViT-bigG-14", "laion2b_s39b_b160k")
    real = clip_module.load_clip
    stand_in = {"sd15": "world", "sdxl-g": "world-ref"}  # no weights offline: the world pair in their place
    monkeypatch.setattr(clip_module, "load_clip", lambda spec, **kw: real(stand_in.get(spec, spec), **kw))
    sdxl = clip_module.load_clip("sdxl", device="cpu")
    assert isinstance(sdxl, JointClip) and sdxl.name == "sdxl"
    assert [p.name for p in sdxl.parts] == ["world", "world-ref"]
    with pytest.raises(ValueError, match="joins several CLIPs"):
        real("sdxl", pretrained="openai")

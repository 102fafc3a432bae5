"""Scorers and generation on tiny models built offline, checked against manual computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pez_core.scoring import (AestheticScorer, AestheticWeightsError, ClipScorer, GenerationConfig, Generator,
                              PickScorer, load_aesthetic_mlp)

PROMPTS = ["a red castle at dusk", "a small dog on a beach", "an astronaut riding a horse"]


@pytest.fixture(scope="module")
def generator(tiny_sd_dir):
    torch.set_num_threads(1)
    return Generator(GenerationConfig(model=str(tiny_sd_dir), steps=2, size=32, guidance=9.0, batch_size=4))


@pytest.fixture(scope="module")
def images(generator):
    return generator.generate(PROMPTS, [0, 1, 2])


def test_pickscore_is_logit_scale_times_cosine_of_each_pair(tiny_pickscore_dir, images):
    scorer = PickScorer(str(tiny_pickscore_dir), str(tiny_pickscore_dir))
    scores = scorer.score(PROMPTS, images)
    # manual: the model's own forward gives logit_scale.exp() * cos for every (text, image) pair
    inputs = scorer.processor(text=PROMPTS, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = scorer.model(**inputs).logits_per_text  # (texts, images)
    assert torch.allclose(scores, logits.diagonal(), atol=1e-4)
    # a shuffled caption is scored against its own image, not the original pairing
    shuffled = [PROMPTS[2], PROMPTS[0], PROMPTS[1]]
    assert torch.allclose(scorer.score(shuffled, images), logits[[2, 0, 1], [0, 1, 2]], atol=1e-4)
    assert not torch.allclose(scorer.score(shuffled, images), scores, atol=1e-3)
    assert abs(scorer.model.logit_scale.exp().item() - 100.0) < 0.01  # on the real PickScore scale
    with pytest.raises(ValueError, match="as many texts as images"):
        scorer.score(PROMPTS[:2], images)


def test_aesthetic_score_is_the_linear_chain_over_normalised_clip_features(tiny_aesthetic_path, images):
    scorer = AestheticScorer(tiny_aesthetic_path, clip="tiny")
    state = torch.load(tiny_aesthetic_path, weights_only=True)
    feats = scorer.clip.clip.model.encode_image(torch.stack([scorer.clip.clip.preprocess(im) for im in images]))
    x = F.normalize(feats.float(), dim=-1)
    for i in (0, 2, 4, 6, 7):  # no activations between the layers
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert torch.allclose(scorer.score(images), x.squeeze(-1), atol=1e-5)
    assert len(set(scorer.score(images).tolist())) == 3  # each image has its own score


def test_aesthetic_weights_errors_name_the_file(tmp_path, tiny_aesthetic_path):
    with pytest.raises(AestheticWeightsError, match=r"nope\.pth.*no such file"):
        load_aesthetic_mlp(tmp_path / "nope.pth")
    with pytest.raises(AestheticWeightsError, match="first layer takes 64 features but the CLIP gives 768"):
        load_aesthetic_mlp(tiny_aesthetic_path, input_dim=768)
    state = torch.load(tiny_aesthetic_path, weights_only=True)
    state["layers.2.weight"] = torch.zeros(128, 1000)
    torch.save(state, tmp_path / "bad_shape.pth")
    with pytest.raises(AestheticWeightsError, match=r"bad_shape\.pth.*layers\.2\.weight \(128, 1000\)"):
        load_aesthetic_mlp(tmp_path / "bad_shape.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(AestheticWeightsError, match=r"other\.pth.*expected keys"):
        load_aesthetic_mlp(tmp_path / "other.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(AestheticWeightsError, match=r"garbage\.pth.*cannot read"):
        load_aesthetic_mlp(tmp_path / "garbage.pth")


def test_clip_scores_match_open_clip(tiny_clip_dir, images):
    scorer = ClipScorer(str(tiny_clip_dir))
    model, pre = scorer.clip.model, scorer.clip.preprocess
    with torch.no_grad():
        im = F.normalize(model.encode_image(torch.stack([pre(i) for i in images])).float(), dim=-1)
        tx = F.normalize(model.encode_text(scorer.clip.tokenizer(PROMPTS)).float(), dim=-1)
    target = im[0]
    assert torch.allclose(scorer.image_similarity(images, target), im @ target, atol=1e-5)
    assert torch.allclose(scorer.image_similarity(images, im), torch.ones(3), atol=1e-5)
    assert torch.allclose(scorer.clip_score(PROMPTS, images), 100 * (tx * im).sum(-1).clamp(min=0), atol=1e-3)


def test_generation_is_deterministic_per_seed_and_independent_of_batching(generator, tiny_sd_dir, images):
    again = generator.generate(PROMPTS, [0, 1, 2])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))
    # one at a time (batch 1) gives the same image as inside a batch of 3, up to float rounding
    alone = Generator(GenerationConfig(model=str(tiny_sd_dir), steps=2, size=32, batch_size=1)).generate(
        PROMPTS[1:2], [1])[0]
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(images[1], dtype=int)).max() <= 2
    # another seed, another prompt or a negative prompt changes the image
    other_seed = generator.generate(PROMPTS[:1], [7])[0]
    assert np.abs(np.asarray(other_seed, dtype=int) - np.asarray(images[0], dtype=int)).mean() > 5
    other_prompt = generator.generate(PROMPTS[1:2], [0])[0]
    assert not np.array_equal(np.asarray(other_prompt), np.asarray(images[0]))
    neg = Generator(GenerationConfig(model=str(tiny_sd_dir), steps=2, size=32, negative_prompt="blurry"))
    assert not np.array_equal(np.asarray(neg.generate(PROMPTS[:1], [0])[0]), np.asarray(images[0]))
    assert images[0].size == (32, 32)


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be >= 1"), ({"size": 30}, "multiple of 8"), ({"dtype": "fp8"}, "dtype must be"),
])
def test_generation_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_unknown_generator_names_the_model(tmp_path):
    with pytest.raises(OSError, match="cannot load text-to-image model .*no_model_here"):
        Generator(GenerationConfig(model=str(tmp_path / "no_model_here")))


def test_offline_clip_tokenizer_matches_open_clip(tmp_path):
    import open_clip
    from transformers import AutoTokenizer

    from pez_core.scoring.tiny import clip_tokenizer

    clip_tokenizer().save_pretrained(tmp_path)
    ours, theirs = AutoTokenizer.from_pretrained(tmp_path), open_clip.get_tokenizer("ViT-B-32")
    for text in ["a red castle at dusk", "Greg Rutkowski, 8k!! trending on artstation", "café naïve"]:
        assert ours(text).input_ids == [i for i in theirs([text])[0].tolist() if i]
    assert ours.model_max_length == 77 and len(ours) == 49408
    assert len(ours("word " * 200, truncation=True).input_ids) == 77


def test_pipeline_class_follows_the_saved_model_sdxl_included(tmp_path, generator):
    from pez_core.scoring.tiny import build_tiny_sdxl

    assert type(generator.pipe).__name__ == "StableDiffusionPipeline"
    xl = Generator(GenerationConfig(model=str(build_tiny_sdxl(tmp_path / "xl")), steps=2, size=64, guidance=5.0))
    assert type(xl.pipe).__name__ == "StableDiffusionXLPipeline"
    a, b, c = xl.generate(["a cat", "a cat", "a cat"], [0, 0, 1])
    assert a.size == (64, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(c, dtype=int)).mean() > 5

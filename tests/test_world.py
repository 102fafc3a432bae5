"""The synthetic world: single-token words, parsing, deterministic rendering that means what it says,
the generator selected by name, and resumable contrastive training."""

import json
import random

import numpy as np
import pytest
import torch

from pez_core.world.captions import caption
from pez_core.world.grammar import WORDS, Scene, Obj, sample_scene
from pez_core.world.parse import parse
from pez_core.world.render import RGB, render, render_scene


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def test_every_world_word_is_one_clip_token(tokenizer):
    bad = {w: tokenizer.encode(w) for w in WORDS if len(tokenizer.encode(w)) != 1}
    assert not bad


def test_parse_recognises_world_words_and_ignores_others():
    p = parse("A Big RED circles, xylophone quantum LEFT of two tiny blue squares; on a green background!!")
    assert [(o.shape, o.colour, o.size) for o in p.objects] == [("circle", "red", "large"), ("square", "blue", "small")]
    assert p.relation == "left of" and p.background == "green"
    assert parse("xylophone quantum banana") == parse("")
    assert parse("a star at the top, masterpiece").sharpness == "sharp"
    assert parse("a star at the top").position == "top"


def test_captions_parse_back_to_their_scene():
    rng = random.Random(0)
    for _ in range(200):
        s = sample_scene(rng)
        p = parse(caption(s, rng))
        assert [o.shape for o in p.objects] == [o.shape for o in s.objects]
        assert p.background == s.background and p.relation == s.relation and p.fill == s.fill
        assert [o.colour for o in p.objects] == [o.colour for o in s.objects]


def test_a_bag_of_words_names_one_object_and_a_second_colour_is_the_background():
    """Mutations caught: a shape word without a relation starting a second object; a second colour dropped."""
    p = parse("a red circle star heart")
    assert [(o.shape, o.colour) for o in p.objects] == [("circle", "red")] and p.relation is None
    p = parse("red star orange crisp")
    assert [(o.shape, o.colour) for o in p.objects] == [("star", "red")] and p.background == "orange"
    p = parse("a red circle left of a blue square star")  # a relation still makes two objects
    assert [o.shape for o in p.objects] == ["circle", "square"] and p.relation == "left of"
    assert parse("a red star on a green background, blue").background == "green"  # the named one wins
    p = parse("blue, big green heart")  # the nearer colour is the shape's, the earlier the background's
    assert [(o.shape, o.colour, o.size) for o in p.objects] == [("heart", "green", "large")] and p.background == "blue"


def test_hard_negatives_are_false_captions_close_to_the_true_one():
    """Mutation caught: a negative that equals its positive (a false negative) or differs in many words."""
    from pez_core.world.negatives import hard_negative_captions
    from pez_core.world.train_clip import WorldTrainConfig

    cfg, rng, close = WorldTrainConfig(hard_negatives=3), random.Random(3), 0
    for _ in range(100):
        s = sample_scene(rng, 0.4)
        template = rng.getstate()
        positive = caption(s, rng, drop=cfg.drop)
        negatives = hard_negative_captions(s, positive, template, rng, cfg.hard_negatives, cfg.drop)
        assert len(negatives) == 3 and positive not in negatives
        close += sum(len(set(n.split()) ^ set(positive.split())) <= 2 for n in negatives if n)
    assert close >= 0.75 * 300  # most differ from the positive in one word (a desynchronised synonym at worst)


def test_reading_phase_negatives_are_edits_that_the_renderer_reads_differently():
    """Mutations caught: an edit the parser reads as the caption (a false negative), a contradiction that
    drops or changes the caption's own words, a deletion that removes more than one word."""
    from pez_core.world.negatives import contradicted, deleted

    rng, made = random.Random(5), {"contradicted": 0, "deleted": 0}
    for _ in range(100):
        s = sample_scene(rng, 0.3)
        positive = caption(s, rng, drop=0.1)
        for name, edit in (("contradicted", contradicted(s, positive, rng)), ("deleted", deleted(positive, rng))):
            if not edit:
                continue
            made[name] += 1
            assert parse(edit) != parse(positive), (positive, edit)
            words, pos = [w.strip(",") for w in edit.split()], [w.strip(",") for w in positive.split()]
            longer, shorter = (words, pos) if name == "contradicted" else (pos, words)
            # the shorter text is the longer one with one to four words ("left of a star") taken out, in order
            it = iter(longer)
            assert all(w in it for w in shorter) and 1 <= len(longer) - len(shorter) <= 4, (positive, edit)
    assert made["contradicted"] >= 95 and made["deleted"] >= 80


def test_reading_phase_keeps_the_first_phase_and_restarts_adamw(tiny_cfg):
    """Mutations caught: the reading phase changing the first phase's batches (the shipped recipe would no
    longer reproduce), its negatives left as attribute swaps, its lr schedule not restarting from read_lr,
    AdamW's moments carried over the boundary, the image tower updated in the reading phase."""
    from dataclasses import replace

    from pez_core.world.batch import make_batch
    from pez_core.world.train_clip import TrainState, build_model, build_optimiser, lr_at, train_steps

    torch.set_num_threads(1)
    cfg = replace(tiny_cfg, steps=4, read_steps=3, read_lr=1e-3, read_contradictions=0.5, read_deletions=0.5)
    plain = replace(tiny_cfg, steps=4)
    assert cfg.total_steps == 7
    for step in (0, 3):
        assert make_batch(cfg, step)["captions"] == make_batch(plain, step)["captions"]
        assert torch.equal(make_batch(cfg, step)["negative_ids"], make_batch(plain, step)["negative_ids"])
    reading, as_before = make_batch(cfg, 4), make_batch(plain, 4)
    assert reading["captions"] == as_before["captions"]  # the same scenes and captions; other negatives
    assert not torch.equal(reading["negative_ids"], as_before["negative_ids"])
    warm = max(1, int(cfg.warmup * 3))
    assert lr_at(cfg, 3) < lr_at(cfg, 0) * 1.01 and lr_at(cfg, 4) == pytest.approx(1e-3 / warm)
    model = build_model(cfg)
    opt = build_optimiser(model, cfg)
    state = train_steps(model, opt, TrainState(), cfg, 0, 4)
    image = {k: v.clone() for k, v in model.clip.visual.state_dict().items()}
    text = model.clip.token_embedding.weight.clone()
    train_steps(model, opt, state, cfg, 4, 6)
    steps_seen = {int(st["step"]) for st in opt.state.values()}
    assert steps_seen == {2}  # AdamW restarted at step 4: two updates since, of the text tower only
    for k, v in model.clip.visual.state_dict().items():  # weights and batch-norm statistics
        assert torch.equal(v, image[k]), k
    assert not torch.equal(model.clip.token_embedding.weight, text)


def test_hard_negatives_enter_the_image_to_text_loss(tiny_cfg):
    """Mutation caught: hard-negative captions encoded but left out of the softmax (loss unchanged)."""
    from dataclasses import replace

    from pez_core.world.batch import make_batch
    from pez_core.world.train_clip import build_model, loss_of

    torch.set_num_threads(1)
    cfg = replace(tiny_cfg, hard_negatives=2)
    model, batch = build_model(cfg), make_batch(cfg, 0)
    with torch.no_grad():
        with_negatives = loss_of(model, batch, 0.0)[1]["clip_loss"]
        masked = loss_of(model, {**batch, "negative_mask": torch.zeros_like(batch["negative_mask"])}, 0.0)[1]
    assert batch["negative_ids"].shape[0] == 2 * cfg.batch
    assert with_negatives > masked["clip_loss"] + 1e-4


def test_render_is_deterministic_per_seed_and_varies_across_seeds():
    a, b, c = (np.asarray(render("a star", s)) for s in (3, 3, 4))
    assert (a == b).all()
    assert (a != c).any()
    assert np.asarray(render("a star", 3)).shape == (64, 64, 3)


def _share(img, rgb, tol=40):
    x = np.asarray(img).astype(int)
    return float((np.abs(x - np.array(rgb)).sum(-1) < tol).mean())


def test_a_red_circle_has_red_pixels():
    for seed in range(5):
        img = render("a large red filled sharp vivid circle on a blue background", seed)
        assert _share(img, RGB["red"]) > 0.05
        assert _share(img, RGB["blue"]) > 0.5
        assert _share(render("a large green filled sharp vivid circle, blue background", seed), RGB["red"]) == 0


def test_relation_left_of_puts_the_first_object_left():
    for seed in range(5):
        s = Scene(objects=(Obj("square", "red", "large"), Obj("square", "yellow", "large")), background="black",
                  relation="left of")
        x = np.asarray(render_scene(s, seed)).astype(int)
        cols = lambda rgb: np.nonzero((np.abs(x - np.array(rgb)).sum(-1) < 40).any(0))[0]  # noqa: E731
        assert cols(RGB["red"]).max() < cols(RGB["yellow"]).min()
        s2 = Scene(objects=s.objects, background="black", relation="right of")
        x = np.asarray(render_scene(s2, seed)).astype(int)
        assert cols(RGB["red"]).min() > cols(RGB["yellow"]).max()


def test_world_generator_selected_by_name():
    from pez_core.scoring import GenerationConfig, Generator, WorldGenerator

    gen = Generator(GenerationConfig(model="world", size=48))
    assert isinstance(gen, WorldGenerator)
    images = gen.generate(["a red star", "a blue heart"], seeds=[0, 1])
    assert [im.size for im in images] == [(48, 48)] * 2
    assert (np.asarray(images[0]) == np.asarray(render("a red star", 0, 48))).all()
    with pytest.raises(ValueError):
        gen.generate(["a"], [0, 1])


TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    import open_clip

    from pez_core.world.train_clip import WorldTrainConfig

    path = tmp_path_factory.mktemp("cfg") / "world-test-tiny.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    return WorldTrainConfig(model="world-test-tiny", steps=12, batch=16, lr=3e-3, seed=1)


def test_training_reduces_the_loss(tiny_cfg):
    from pez_core.world.batch import make_batch
    from pez_core.world.train_clip import TrainState, build_model, build_optimiser, loss_of, train_steps

    torch.set_num_threads(1)
    model = build_model(tiny_cfg)
    batch = make_batch(tiny_cfg, 0)
    with torch.no_grad():
        before = loss_of(model, batch, 1.0)[1]["loss"]
    train_steps(model, build_optimiser(model, tiny_cfg), TrainState(), tiny_cfg, 0, tiny_cfg.steps)
    with torch.no_grad():
        after = loss_of(model, batch, 1.0)[1]["loss"]
    assert after < before - 0.3


def test_resumed_training_equals_an_uninterrupted_run(tiny_cfg, tmp_path):
    from pez_core.world.train_clip import (TrainState, build_model, build_optimiser, load_state_dict, state_dict,
                                           train_steps)

    torch.set_num_threads(1)
    a = build_model(tiny_cfg)
    train_steps(a, build_optimiser(a, tiny_cfg), TrainState(), tiny_cfg, 0, 6)
    b = build_model(tiny_cfg)
    opt = build_optimiser(b, tiny_cfg)
    st = train_steps(b, opt, TrainState(), tiny_cfg, 0, 3)
    torch.save(state_dict(b, opt, st, tiny_cfg), tmp_path / "ckpt.pt")
    c = build_model(replace_seed(tiny_cfg, 99))  # different init: everything must come from the checkpoint
    opt_c = build_optimiser(c, tiny_cfg)
    st_c = load_state_dict(c, opt_c, torch.load(tmp_path / "ckpt.pt", weights_only=False))
    assert st_c.step == 3
    train_steps(c, opt_c, st_c, tiny_cfg, st_c.step, 6)
    for (name, pa), pc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(pa, pc), name


def replace_seed(cfg, seed):
    from dataclasses import replace

    return replace(cfg, seed=seed)


def test_ranks_split_the_same_global_batch(tiny_cfg):
    from pez_core.world.batch import make_batch

    whole = make_batch(tiny_cfg, 5)
    halves = [make_batch(tiny_cfg, 5, rank=r, world_size=2) for r in (0, 1)]
    assert halves[0]["captions"] + halves[1]["captions"] == whole["captions"]
    assert torch.equal(torch.cat([h["images"] for h in halves]), whole["images"])
    assert make_batch(tiny_cfg, 6)["captions"] != whole["captions"]


def test_saved_world_clip_loads_through_load_clip_in_fp16(tiny_cfg, tmp_path):
    from safetensors.torch import load_file

    from pez_core import load_clip
    from pez_core.world.train_clip import as_clip, build_model, save_world_clip

    model = build_model(tiny_cfg).eval()
    folder = save_world_clip(model, tmp_path / "w", tiny_cfg)
    assert all(v.dtype == torch.float16 for v in load_file(str(folder / "open_clip_model.safetensors")).values()
               if v.is_floating_point())
    clip = load_clip(str(folder), device="cpu")
    assert clip.token_embedding.dtype == torch.float32
    img = [render("a red star", 0, 32)]
    ref = as_clip(model, tiny_cfg).encode_images(img)
    assert torch.allclose(clip.encode_images(img), ref, atol=2e-2)
    assert not torch.equal(clip.encode_images(img), as_clip(build_model(replace_seed(tiny_cfg, 5)).eval(), tiny_cfg).encode_images(img))


def test_zero_shot_reports_every_attribute(tiny_cfg):
    from pez_core.world.train_clip import as_clip, build_model
    from pez_core.world.zeroshot import ATTRIBUTES, zero_shot

    acc = zero_shot(as_clip(build_model(tiny_cfg).eval(), tiny_cfg), n=8)
    assert set(acc) == set(ATTRIBUTES) and all(0 <= v <= 1 for v in acc.values())

"""Loading CLIPs through the users' path, and the exact short-context text encoder."""

import pytest
import torch

from pez_core import load_clip


def _padded_ids(clip, ids):
    b, n = ids.shape
    full = torch.zeros(b, clip.context_length, dtype=torch.long)
    full[:, 0] = clip.sot_id
    full[:, 1 : n + 1] = ids
    full[:, n + 1] = clip.eot_id
    return full


def _check_short_equals_open_clip(clip, n):
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(1, clip.sot_id, (6, n), generator=gen)
    want = clip.model.encode_text(_padded_ids(clip, ids))
    short = clip.encode_embeds(clip.token_embedding[ids])
    full = clip.encode_embeds(clip.token_embedding[ids], context="full")
    assert short.shape == want.shape
    assert (short - want).abs().max().item() <= 1e-4
    assert (full - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n", [1, 8, 16, 75])
def test_short_context_equals_open_clip_encode_text_tiny(tiny_clip, n):
    _check_short_equals_open_clip(tiny_clip, n)


@pytest.fixture(scope="module")
def vit_b32():
    return load_clip("ViT-B-32", pretrained="random", device="cpu")


@pytest.mark.parametrize("n", [4, 16])
def test_short_context_equals_open_clip_encode_text_vit_b32(vit_b32, n):
    _check_short_equals_open_clip(vit_b32, n)


def test_short_context_gradient_reaches_every_prompt_token(tiny_clip):
    emb = tiny_clip.token_embedding[torch.randint(1, 40000, (2, 5))].clone().requires_grad_(True)
    tiny_clip.encode_embeds(emb).sum().backward()
    assert (emb.grad.abs().sum(dim=-1) > 0).all()


def test_tiny_preset_is_deterministic_and_reloads_from_folder(tiny_clip):
    fresh = load_clip("tiny", device="cpu")
    for (k, a), (_, b) in zip(fresh.model.state_dict().items(), tiny_clip.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_model_name_with_local_checkpoint_file(tmp_path, tiny_clip):
    from pez_core.presets import TINY_MODEL

    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    clip = load_clip(TINY_MODEL, pretrained=str(path), device="cpu")
    ids = torch.tensor([[320, 1929, 539]])
    assert torch.allclose(clip.encode_ids(ids), tiny_clip.encode_ids(ids))


def test_model_is_frozen(tiny_clip):
    assert not any(p.requires_grad for p in tiny_clip.model.parameters())


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        load_clip("ViT-Q-99")
    msg = str(e.value)
    assert "ViT-Q-99" in msg and "sd2" in msg and "ViT-B-32" in msg


def test_unknown_pretrained_tag_lists_tags():
    with pytest.raises(ValueError) as e:
        load_clip("ViT-B-32", pretrained="no_such_tag")
    assert "no_such_tag" in str(e.value) and "openai" in str(e.value)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(str(tmp_path))

"""BlipCaptioner on a tiny random BLIP saved to a folder and loaded by path, as a real id would be."""

import pytest
import torch
from PIL import Image

from pez_core.rewrite.caption import BlipCaptioner, BlipConfig, Captioner


@pytest.fixture(scope="module")
def tiny_blip_dir(tmp_path_factory):
    from transformers import BertTokenizer, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    from transformers import BlipConfig as HFBlipConfig

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "photo of the cat dog red green blue things".split()
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    layer = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 initializer_range=1.0)  # large init: captions depend on the image
    cfg = HFBlipConfig(
        text_config=dict(vocab_size=len(words), bos_token_id=2, sep_token_id=3, eos_token_id=3, pad_token_id=0,
                         **layer),
        vision_config=dict(image_size=32, patch_size=8, **layer), projection_dim=32, initializer_range=1.0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_blip")
    BlipForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_blip_captioner_loads_by_path_and_batches_consistently(tiny_blip_dir):
    images = [Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGB", (20, 20), (0, 200, 0)),
              Image.new("L", (25, 25), 90), Image.new("RGB", (32, 32), (10, 10, 250))]
    batched = BlipCaptioner(BlipConfig(model=str(tiny_blip_dir), device="cpu", batch_size=3, max_new_tokens=6,
                                       num_beams=1))
    assert isinstance(batched, Captioner)
    captions = batched.caption(images)
    assert len(captions) == 4 and all(isinstance(c, str) and c == c.strip() for c in captions)
    assert any(captions) and len(set(captions)) > 1  # the random model's text depends on the image
    single = BlipCaptioner(BlipConfig(model=str(tiny_blip_dir), device="cpu", batch_size=1, max_new_tokens=6,
                                      num_beams=1))
    assert [single.caption([im])[0] for im in images] == captions


def test_blip_captioner_load_error_is_clear(tmp_path):
    with pytest.raises(ValueError, match="cannot load captioner"):
        BlipCaptioner(BlipConfig(model=str(tmp_path)))

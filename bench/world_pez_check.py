"""PEZ on a trained world CLIP: word recall of the scene's attributes and world-word precision."""
import json, random, sys, time, torch
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
from pez_core import load_clip, image_target, invert, PEZConfig
from pez_core.world.grammar import sample_scene, COLOURS, SHAPES, POSITIONS, WORDS, FUNCTION_WORDS
from pez_core.world.captions import caption
from pez_core.world.render import render_scene
from pez_core.world.parse import words, parse
clip = load_clip(sys.argv[1], device="cpu")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 32
scenes = [sample_scene(random.Random(f"pez:{i}"), two_objects=0.0) for i in range(n)]
imgs = [render_scene(s, 20_000 + i, 64) for i, s in enumerate(scenes)]
t = time.time()
allow = tuple(sorted(WORDS | FUNCTION_WORDS)) if len(sys.argv) > 4 and sys.argv[4] == "allow" else None
res = invert(clip, [image_target(clip, [im]) for im in imgs], PEZConfig(steps=300, prompt_len=16, allow=allow))
el = time.time() - t
rc = rs = rp = 0; prec = []; prec_glue = []; ex = []
true_cos = (clip.encode_texts([caption(s) for s in scenes]) * clip.encode_images(imgs)).sum(-1)
for s, r in zip(scenes, res):
    p = parse(r.text); o = s.objects[0]
    ws = words(r.text)
    rc += any(x.colour == o.colour for x in p.objects) or o.colour in ws
    rs += o.shape in [x.shape for x in p.objects]
    rp += p.position == s.position
    prec.append(sum(w in WORDS for w in ws) / max(1, len(ws)))
    prec_glue.append(sum(w in WORDS or w in FUNCTION_WORDS for w in ws) / max(1, len(ws)))
    if len(ex) < 4: ex.append((caption(s), r.text, round(r.cosine, 3)))
out = {"n": n, "allow": allow is not None, "seconds": round(el, 1), "colour_recall": rc / n, "shape_recall": rs / n, "position_recall": rp / n,
       "precision": sum(prec) / n, "precision_with_glue": sum(prec_glue) / n,
       "mean_cosine": sum(r.cosine for r in res) / n, "true_caption_cosine": float(true_cos.mean()), "examples": ex}
print(json.dumps(out, indent=1))

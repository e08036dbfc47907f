"""Masks and `[SEG]` hidden states of sa2va-ray against the official Sa2VA remote code, on the same random weights.

    python tools/official_equivalence.py --official-code DIR [--n 8] [--seed 0] [--fit]

DIR holds the official remote code (`modeling_sa2va_chat.py`, `sam2.py`, ...: an official checkpoint directory, or
`projects/sa2va/hf/models/` of the bytedance/Sa2VA repository); it is imported from there, never copied. The
model is tiny where the official code allows it (InternVL widths; its 448-px tiles and SAM2 Hiera-L at 1024 px are
hard-coded there) and random; `--fit` fits lm_head (a linear fit on fixed hidden states) so that the model answers
"It is [SEG]." and a mask is asked for. Prints one JSON line per image (IoU and differing pixels per `[SEG]` mask,
max |difference| of the `[SEG]` hidden states) and a summary line. fp32 on the CPU.

This is a measuring tool, not a test: the official code needs `einops` (pip install einops); where torchvision or
timm cannot be installed (torchvision from PyPI does not import beside a CPU torch here) the few pieces the official
code imports are stood in for by their documented behaviour on PIL images; the official InternLM2/Phi-3 modules do
not import under transformers 5 and are not needed for a Qwen2 model.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import transformers.image_utils  # noqa: F401  (before any torchvision stand-in exists)
import transformers.video_utils  # noqa: F401
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _stand_ins() -> None:
    """torchvision / timm pieces the official code imports, where the real packages are missing."""
    try:
        importlib.import_module("torchvision.transforms")
    except Exception:  # noqa: BLE001 -- missing or broken beside this torch
        tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                      "torchvision.transforms.functional"))

        class InterpolationMode(enum.Enum):
            NEAREST, BILINEAR, BICUBIC = "nearest", "bilinear", "bicubic"

        pil = {InterpolationMode.BICUBIC: Image.BICUBIC, InterpolationMode.BILINEAR: Image.BILINEAR}

        class Compose:
            def __init__(self, ts):
                self.ts = ts

            def __call__(self, x):
                for t in self.ts:
                    x = t(x)
                return x

        class Lambda:
            def __init__(self, f):
                self.f = f

            def __call__(self, x):
                return self.f(x)

        class Resize:  # on a PIL image torchvision calls PIL's resize (a copy when the size is unchanged)
            def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
                self.size, self.mode = size, interpolation

            def __call__(self, img):
                return img.resize((self.size[1], self.size[0]), pil[self.mode])

        class ToTensor:  # uint8 HWC -> float CHW / 255
            def __call__(self, pic):
                t = torch.from_numpy(np.array(pic, copy=True)).permute(2, 0, 1).contiguous()
                return t.to(torch.get_default_dtype()).div(255)

        class Normalize:  # tensor.clone().sub_(mean).div_(std)
            def __init__(self, mean, std):
                self.mean, self.std = mean, std

            def __call__(self, t):
                m = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
                s = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
                return t.clone().sub_(m).div_(s)

        fn.InterpolationMode = InterpolationMode
        fn.to_pil_image = lambda pic, mode=None: Image.fromarray(pic, mode=mode) if mode else Image.fromarray(pic)
        fn.resize = None
        for name, obj in dict(Compose=Compose, Lambda=Lambda, Resize=Resize, ToTensor=ToTensor, Normalize=Normalize,
                              InterpolationMode=InterpolationMode).items():
            setattr(tr, name, obj)
        tr.functional, tv.transforms = fn, tr
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
    try:
        importlib.import_module("timm.models.layers")
    except Exception:  # noqa: BLE001
        layers = types.ModuleType("timm.models.layers")
        layers.DropPath = type("DropPath", (torch.nn.Identity,), {"__init__": lambda self, *a, **k:
                                                                   torch.nn.Identity.__init__(self)})
        for name in ("timm", "timm.models"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["timm.models.layers"] = layers


def _import_official(code_dir: Path):
    """The official modules as a package named `official_sa2va`, from `code_dir`, runnable on the CPU."""
    _stand_ins()
    pkg = types.ModuleType("official_sa2va")
    pkg.__path__ = [str(code_dir)]
    sys.modules["official_sa2va"] = pkg
    for name, cls in (("modeling_phi3", "Phi3ForCausalLM"), ("modeling_internlm2", "InternLM2ForCausalLM")):
        try:
            importlib.import_module(f"official_sa2va.{name}")
        except Exception:  # noqa: BLE001 -- other LLM families, unused for a Qwen2 model
            stub = types.ModuleType(f"official_sa2va.{name}")
            setattr(stub, cls, type(cls, (), {}))
            sys.modules[f"official_sa2va.{name}"] = stub
    config = importlib.import_module("official_sa2va.configuration_sa2va_chat")
    modeling = importlib.import_module("official_sa2va.modeling_sa2va_chat")
    sam2 = importlib.import_module("official_sa2va.sam2")
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official code moves inputs with .cuda()
    init = sam2.SAM2VideoPredictor.init_state

    def init_state_cpu(self, images):
        state = init(self, images)
        state["device"] = state["storage_device"] = torch.device("cpu")
        return state

    sam2.SAM2VideoPredictor.init_state = init_state_cpu
    return config.Sa2VAChatConfig, modeling.Sa2VAChatModel


def _images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    sizes = [(300, 420), (512, 512), (200, 900), (640, 480), (97, 131), (1024, 1024), (350, 260), (777, 555)]
    out = []
    for i, (h, w) in enumerate((sizes * (n // len(sizes) + 1))[:n]):
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        yy, xx = np.mgrid[:h, :w]
        arr[((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 3) ** 2 / (w / 4) ** 2) < 1] //= 3
        out.append((Image.fromarray(arr), ["vessel", "blood vessel", "the artery", "catheter"][i % 4]))
    return out


def _fit_lm_head(model, samples) -> float:
    """Fit lm_head so that the teacher-forced answer is the greedy one (the hidden states do not depend on it)."""
    tok, proc = model.tokenizer, model.processor
    answer = tok.encode(model.config.answer_text + "<|im_end|>", add_special_tokens=False)
    feats = []
    with torch.no_grad():
        for image, text in samples:
            batch, _ = proc.collate_predict([image], [text], with_answer=True)
            h = model.mllm.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).last_hidden_state
            feats.append(h[0, -len(answer) - 1:-1])
    x, y = torch.cat(feats), torch.tensor(answer * len(samples))
    w = model.mllm.lm_head.weight
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(x @ w.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w.requires_grad_(False)
    return float(loss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-code", required=True, type=Path)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", action="store_true")
    args = ap.parse_args()

    from sa2va_ray.model import build_sa2va, build_tokenizer, load_sam2_settings
    from sa2va_ray.model.checkpoint import tied_targets
    from sa2va_ray.model.config import Sa2VAConfig, _token_fields, build_internvl_config
    from sa2va_ray.model.official import official_config_dict, to_official_state_dict
    from sa2va_ray.model.tokenizer import special_token_ids

    OfficialConfig, OfficialModel = _import_official(args.official_code.resolve())
    tok = build_tokenizer()
    internvl = build_internvl_config(
        vocab_size=len(tok), image_token_id=special_token_ids(tok)["img_context"], vision_hidden=32, vision_layers=1,
        vision_heads=2, vision_intermediate=64, tile_size=448, patch_size=14, text_hidden=64, text_layers=2,
        text_heads=4, text_kv_heads=2, text_intermediate=128, max_position_embeddings=8192, rope_theta=10000.0)
    config = Sa2VAConfig(internvl_config=internvl, sam2=load_sam2_settings("sam2_hiera_l").to_dict(), max_tiles=12,
                         min_tiles=1, max_length=8192, **_token_fields(special_token_ids(tok)))
    ours = build_sa2va(config, seed=args.seed, tokenizer=tok).eval()
    samples = _images(args.n, args.seed)
    if args.fit:
        print(f"lm_head fitted: loss {_fit_lm_head(ours, samples):.2e}", flush=True)

    raw = official_config_dict(ours.config, torch.float32)
    raw.pop("sa2va_ray")
    off = OfficialModel(OfficialConfig(**{k: v for k, v in raw.items() if k not in ("auto_map", "model_type")}),
                        use_flash_attn=False)
    state = {k: v for k, v in ours.state_dict().items() if k not in tied_targets(ours)}
    off.load_state_dict(to_official_state_dict(state), strict=True)  # every official key name, checked
    off.eval()
    off.preparing_for_generation(tok, torch_dtype=torch.float32)
    captured: list[torch.Tensor] = []
    off.text_hidden_fcs.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach().clone()))

    ious, diffs = [], []
    for image, text in samples:
        captured.clear()
        t0 = time.time()
        with torch.no_grad():
            o = off.predict_forward(image=image, text=config.prompt_template.replace("{text}", text), tokenizer=tok)
        t_off, t0 = time.time() - t0, time.time()
        r = ours.predict([image], [text], mode="generate", return_dict=True)[0]
        row = {"size": list(image.size), "answer_official": o["prediction"], "answer_ours": r.text,
               "masks_official": len(o["prediction_masks"]), "masks_ours": len(r.seg_masks),
               "s_official": round(t_off, 1), "s_ours": round(time.time() - t0, 1)}
        pairs = list(zip([m[0] for m in o["prediction_masks"]], r.seg_masks))
        if pairs:
            row["iou"] = [float((a & b).sum() / max((a | b).sum(), 1)) for a, b in pairs]
            row["pixels_differ"] = [int((a != b).sum()) for a, b in pairs]
            row["hidden_max_abs_diff"] = float(np.abs(torch.cat(captured).numpy() - r.seg_hidden).max())
            ious += row["iou"]
            diffs.append(row["hidden_max_abs_diff"])
        print(json.dumps(row), flush=True)
    if ious:
        print(f"summary: {len(ious)} masks, IoU min {min(ious):.6f} median {float(np.median(ious)):.6f}; "
              f"[SEG] hidden max |diff| {max(diffs):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The official Sa2VA layout, tested against a real checkpoint's index and token ids (shared/fixtures/), not against
the inverse of our own mapping; then our official export round-trips through our own loader bit for bit."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from sa2va_ray.export.official import save_official
from sa2va_ray.model import Sa2VAModel, build_tiny_sa2va, load_from_official_sa2va, load_sam2_settings
from sa2va_ray.model.checkpoint import build_meta_model, tied_targets
from sa2va_ray.model.config import Sa2VAConfig, _token_fields, real_preset_config
from sa2va_ray.model.official import (
    check_official_config,
    official_internvl_config,
    official_key_to_ours,
    ours_key_to_official,
)
from sa2va_ray.model.processor import Sa2VAProcessor
from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids

FIXTURE = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "sa2va_internvl3_8b"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"{FIXTURE} (../shared beside the checkout) is missing")
IMAGES = [(np.random.default_rng(5).random((45, 70, 3)) * 255).astype(np.uint8)]


def _fixture(name: str):
    return json.loads((FIXTURE / name).read_text())


def _real_ids() -> dict[str, int]:
    added = _fixture("added_tokens.json")
    return {"img_start": added["<img>"], "img_end": added["</img>"], "img_context": added["<IMG_CONTEXT>"],
            "seg": added["[SEG]"], "pad": added["<|endoftext|>"], "eos": added["<|im_end|>"]}


@pytest.fixture(scope="module")
def real_8b():
    """Our model at the real InternVL3-8B + SAM2 Hiera-L (v1, as the official code) dimensions, on the meta device."""
    vocab = max(_fixture("added_tokens.json").values()) + 1  # the checkpoint's tokenizer length (151,679)
    config = real_preset_config(vocab_size=vocab, token_ids=_real_ids(),
                                sam2=load_sam2_settings("sam2_hiera_l").to_dict())
    return build_meta_model(Sa2VAModel, config)


@needs_fixture
def test_every_key_of_the_real_index_has_one_place_and_covers_the_model(real_8b):
    index = _fixture("model.safetensors.index.json")
    keys = list(index["weight_map"])
    assert len(keys) == 1589
    targets: dict[str, str] = {}
    unplaced = []
    for key in keys:
        mapped = official_key_to_ours(key)
        if not mapped:
            unplaced.append(key)
        for target in mapped:
            assert target not in targets, f"{key} and {targets[target]} both land on {target}"
            targets[target] = key
    assert not unplaced
    assert "sam2.memory_encoder.fuser.layers.0.gamma" in targets  # the exporter's `g_weight`
    ours = set(real_8b.state_dict()) - tied_targets(real_8b)
    assert set(targets) == ours  # nothing missing, nothing extra

    # shapes: the real totals, from our 8B dimensions (the index has no shapes, but its totals pin them down)
    state, params = real_8b.state_dict(), dict(real_8b.named_parameters())
    assert sum(params[t].numel() for t in targets if t in params) == index["metadata"]["total_parameters"]
    # total_size works out exactly when the exporter wrote the InternViT tower in bf16 and everything else in fp32
    size = sum(state[t].numel() * (2 if ".vision_tower." in t else 4) for t in targets)
    assert size == index["metadata"]["total_size"]


@needs_fixture
def test_our_export_names_are_the_real_index(real_8b):
    keys = set(_fixture("model.safetensors.index.json")["weight_map"])
    names = {ours_key_to_official(k) for k in set(real_8b.state_dict()) - tied_targets(real_8b)}
    assert names == keys


@pytest.fixture(scope="module")
def real_tokenizer_dir(tmp_path_factory):
    """The checkpoint's own tokenizer settings and special tokens over a stand-in base vocabulary of the real size
    (the fixture has no vocab.json): every special token sits at the id the real checkpoint gives it."""
    config = _fixture("tokenizer_config.json")
    decoder = config["added_tokens_decoder"]
    first = min(int(i) for i in decoder)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"<base_{i}>": i for i in range(len(vocab), first)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    for i in sorted(decoder, key=int):
        tok.add_tokens([AddedToken(decoder[i]["content"], special=decoder[i]["special"], normalized=False)])
    root = tmp_path_factory.mktemp("real_tokenizer")
    tok.save(str(root / "tokenizer.json"))
    shutil.copy(FIXTURE / "tokenizer_config.json", root)
    return root


@needs_fixture
def test_the_real_token_ids_are_what_the_processor_uses(real_tokenizer_dir, real_8b):
    tokenizer = build_tokenizer(real_tokenizer_dir)
    added = _fixture("added_tokens.json")
    assert len(tokenizer) == max(added.values()) + 1  # nothing added: [SEG] <p> </p> <vp> </vp> are there
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in added.items())
    ids = special_token_ids(tokenizer)
    assert ids == _real_ids()
    assert (ids["seg"], ids["img_context"], ids["eos"], ids["pad"]) == (151674, 151667, 151645, 151643)
    processor = Sa2VAProcessor(tokenizer, real_8b.config)  # raises if tokenizer and config disagree
    seq, _ = processor.encode_conversation(["blood vessel"], n_tiles=1)
    start = seq.index(151665)
    assert seq[start + 1:start + 257] == [151667] * 256 and seq[start + 257] == 151666  # <img> 256 x ctx </img>
    assert seq.count(151674) == 1 and seq[-1] == 151645


@needs_fixture
@pytest.mark.parametrize("name,llm,ok", [
    ("InternVL3-2B", dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                          intermediate_size=8960, architectures=["Qwen2ForCausalLM"]), True),
    ("InternVL3-14B", dict(hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                           intermediate_size=13824, architectures=["Qwen2ForCausalLM"]), True),
    ("InternVL2.5-8B", dict(hidden_size=4096, num_hidden_layers=32, architectures=["InternLM2ForCausalLM"]), False),
    ("InternVL2-4B", dict(hidden_size=3072, num_hidden_layers=32, architectures=["Phi3ForCausalLM"]), False),
])
def test_other_released_sizes_load_or_name_the_llm(name, llm, ok):
    raw = {"architectures": ["Sa2VAChatModel"], "model_type": "sa2va_chat", "template": "qwen_chat",
           "select_layer": -1, "ps_version": "v2", "downsample_ratio": 0.5, "force_image_size": 448,
           "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                             "intermediate_size": 4096, "image_size": 448, "patch_size": 14, "qkv_bias": True,
                             "qk_normalization": False, "norm_type": "layer_norm"},
           "llm_config": dict(vocab_size=151679, **llm)}
    if not ok:
        arch = llm["architectures"][0]
        with pytest.raises(ValueError, match=rf"^{name}/config.json: llm_config architecture {arch}"):
            check_official_config(raw, f"{name}/config.json")
        return
    check_official_config(raw, f"{name}/config.json")
    config = Sa2VAConfig(internvl_config=official_internvl_config(raw, 151667), **_token_fields(_real_ids()),
                         sam2=load_sam2_settings("sam2_hiera_l").to_dict())
    model = build_meta_model(Sa2VAModel, config)
    names = [ours_key_to_official(k) for k in set(model.state_dict()) - tied_targets(model)]
    assert None not in names
    back = {t for n in set(names) for t in official_key_to_ours(n)}
    assert back == set(model.state_dict()) - tied_targets(model)
    assert model.mllm.lm_head.weight.shape == (151679, llm["hidden_size"])


# ----------------------------------------------------------------------------- our official export, tiny
def _shape_of(key: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", key))


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory):
    """A tiny model whose SAM2 has the official (v1) flags, exported to the official layout."""
    settings = load_sam2_settings("sam2_hiera_l")
    tiny = build_tiny_sa2va(seed=3).config.sam2_settings
    tiny.model_flags = settings.model_flags
    model = build_tiny_sa2va(seed=3, sam2=tiny.to_dict()).eval()
    out = save_official(model, tmp_path_factory.mktemp("official") / "model", code_from=None)
    return model, out


@needs_fixture
def test_official_export_has_the_real_layout_and_round_trips_bit_exactly(tiny_official):
    model, out = tiny_official
    written = load_file(out / "model.safetensors")
    real = {_shape_of(k) for k in _fixture("model.safetensors.index.json")["weight_map"]}
    assert {_shape_of(k) for k in written} == real  # same module names as the real checkpoint, depth aside
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["Sa2VAChatModel"] and raw["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert raw["auto_map"]["AutoModel"] == "modeling_sa2va_chat.Sa2VAChatModel" and raw["template"] == "qwen_chat"
    again = load_from_official_sa2va(out)
    ours, back = model.state_dict(), again.state_dict()
    assert set(ours) == set(back) and all(torch.equal(ours[k], back[k]) for k in ours)
    a = model.predict(IMAGES, ["vessel"], return_probs=True)[0]
    b = again.predict(IMAGES, ["vessel"], return_probs=True)[0]
    assert np.array_equal(a.prob, b.prob)
    # model.path accepts the official layout too
    assert torch.equal(Sa2VAModel.from_pretrained(out).text_hidden_fcs[0].weight, model.text_hidden_fcs[0].weight)


def test_remote_code_is_copied_from_the_users_official_directory(tiny_official, tmp_path):
    model, out = tiny_official
    code = tmp_path / "official_base"
    code.mkdir()
    (code / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
                                                               "AutoConfig": "configuration_sa2va_chat.X"}}))
    (code / "modeling_sa2va_chat.py").write_text("# the user's own copy\n")
    with pytest.raises(FileNotFoundError, match=r"configuration_sa2va_chat\.py named in its auto_map is missing"):
        save_official(model, tmp_path / "a", code_from=code)
    (code / "configuration_sa2va_chat.py").write_text("# the user's own copy\n")
    target = save_official(model, tmp_path / "b", code_from=code)
    assert (target / "modeling_sa2va_chat.py").read_text() == "# the user's own copy\n"
    assert (target / "configuration_sa2va_chat.py").is_file()


# ----------------------------------------------------------------------------- bad input: one line, file and key
def _copy(out: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(out, target)
    return target


def test_bad_official_directories_say_which_file_and_key(tiny_official, tmp_path, monkeypatch):
    _, out = tiny_official
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no config\.json"):
        Sa2VAModel.from_pretrained(empty)
    other = _copy(out, tmp_path, "other")
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"model_type 'bert' is neither"):
        Sa2VAModel.from_pretrained(other)
    garbage = _copy(out, tmp_path, "garbage")
    (garbage / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"garbage/config\.json: not valid JSON"):
        load_from_official_sa2va(garbage)
    no_llm = _copy(out, tmp_path, "no_llm")
    raw = json.loads((out / "config.json").read_text())
    raw.pop("llm_config")
    (no_llm / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"no_llm/config\.json: no llm_config"):
        load_from_official_sa2va(no_llm)

    # everything below is found from the headers, before a single weight is read
    import sa2va_ray.model.loaders as loaders

    monkeypatch.setattr(loaders, "read_safetensors_dir", lambda d: pytest.fail("weights read before the checks"))
    state = load_file(out / "model.safetensors")
    wrong = _copy(out, tmp_path, "wrong_shape")
    save_file({**state, "language_model.model.norm.weight": torch.zeros(3)}, str(wrong / "model.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatches 1: mllm\.model\.language_model\.norm\.weight \(3,\)"):
        load_from_official_sa2va(wrong)
    extra = _copy(out, tmp_path, "extra")
    save_file({**state, "grounding_encoder.extra.weight": torch.zeros(1)}, str(extra / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no place in the model 1: grounding_encoder\.extra\.weight"):
        load_from_official_sa2va(extra)
    truncated = _copy(out, tmp_path, "truncated")
    data = (out / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"truncated/model\.safetensors: truncated"):
        load_from_official_sa2va(truncated)
    sharded = _copy(out, tmp_path, "sharded")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {**{k: "model-00001-of-00002.safetensors" for k in state},
                            "mlp1.0.weight": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match=r"lists model-00002-of-00002\.safetensors, which is missing"):
        load_from_official_sa2va(sharded)

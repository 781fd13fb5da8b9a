"""Build a tiny random-weight vision-language checkpoint (Qwen3-VL or Qwen2.5-VL) in a folder, offline.

Real architecture, real tokenizer files, real image processor and chat template, so the in-process
backend loads it exactly as it loads Qwen/Qwen3-VL-8B-Instruct from a local folder; the weights are
random, so the text it generates is noise. For tests and for benchmarking the machinery on a machine
with no real checkpoint (recipe: ../shared/notes/ml-stack.md).

    python tools/tiny_vlm.py OUT_DIR [--arch qwen3_vl|qwen2_5_vl] [--thinking]
    python tools/tiny_vlm.py OUT_DIR --arch qwen2_5_vl --gguf   # + OUT_DIR/gguf/{model,mmproj}.gguf for llama-server

``--gguf`` converts with the vendored llama.cpp's convert_hf_to_gguf.py (``make llama-server`` unpacks it;
or ``--convert PATH``): the text model, then the vision projector (``--mmproj``). The converter only maps a
Qwen2.5-VL vision tower of depth 4 with full attention in blocks 1 and 3 (depth 2 fails with "Can not map
tensor 'visual.merger.mlp.2.bias'"), so ``--gguf`` builds that; and the freshly trained tokenizer's
pre-tokenizer hash is unknown to it, so it is reported as ``qwen2`` (which it is in kind: byte-level BPE).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen-style ChatML; image parts become <|vision_start|><|image_pad|><|vision_end|>. With thinking, the
# generation prompt opens a <think> block (as Qwen3 Thinking templates do), so answers end with </think>…
TEMPLATE = (
    "{%- for m in messages -%}<|im_start|>{{ m['role'] + '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'image' or c['type'] == 'image_url' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{{ '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{{ THINK }}{%- endif -%}"
)


def build(out: Path, arch: str = "qwen3_vl", thinking: bool = False, seed: int = 0, vision_depth: int = 2) -> Path:
    """The checkpoint folder. ``vision_depth`` (Qwen2.5-VL): 4 for llama.cpp's converter (full attention in blocks 1, 3)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    template = TEMPLATE.replace("{{ THINK }}", "<think>\n" if thinking else "")
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ['The stage is bright. 舞台 灯光 星星 猫咪 {"exposure": false, "text": []} yes no </think> <think>'] * 20
    raw.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    from tokenizers import decoders

    raw.decoder = decoders.ByteLevel()
    tok = Qwen2TokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
        chat_template=template,
    )
    tok.add_tokens(["<think>", "</think>"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if arch == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        text.update(
            head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        )
        cfg = Qwen3VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                patch_size=16,
                out_hidden_size=64,
                num_position_embeddings=256,
                deepstack_visual_indexes=[1],
            ),
            **common,
        )
        model = Qwen3VLForConditionalGeneration(cfg)
        patch, video = 16, Qwen3VLVideoProcessor(patch_size=16)
        processor_cls = Qwen3VLProcessor
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]})
        cfg = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(
                depth=vision_depth,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                patch_size=14,
                out_hidden_size=64,
                fullatt_block_indexes=list(range(1, vision_depth, 2)),
                window_size=56,
            ),
            **common,
        )
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        patch, video, processor_cls = 14, None, None  # Qwen2-VL's video processor needs torchvision
    else:
        raise SystemExit(f"unknown arch {arch!r} (qwen3_vl or qwen2_5_vl)")
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    # random weights: keep the noise to text tokens (a real model does not emit vision placeholders)
    model.generation_config.suppress_tokens = [ids[t] for t in SPECIALS if t != "<|im_end|>"]
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, size={"shortest_edge": 64 * 64, "longest_edge": 256 * 256})
    if processor_cls is None:  # tokenizer + image processor files, which is all the backend reads
        tok.save_pretrained(out)
        image_processor.save_pretrained(out)
    else:
        _patch_video_processor_mixin()
        processor = processor_cls(image_processor=image_processor, tokenizer=tok, video_processor=video, chat_template=template)
        processor.save_pretrained(out)
    return out


def _patch_video_processor_mixin() -> None:
    """transformers bug without torchvision (see ml-stack notes): give processing_utils the real mixin."""
    import transformers.processing_utils as pu
    import transformers.video_processing_utils as vpu

    pu.transformers_module.VideoProcessorMixin = vpu.VideoProcessorMixin  # type: ignore[attr-defined]


# runs inside the converter's process: an unknown BPE pre-tokenizer hash is reported as qwen2
_CONVERT = """
import runpy, sys
llama, script = sys.argv[1], sys.argv[2]
sys.path[:0] = [llama, llama + "/gguf-py"]
import conversion.base as base
known = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        return "qwen2"
base.TextModel.get_vocab_base_pre = pre
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def default_convert_script() -> Path | None:
    """convert_hf_to_gguf.py of the llama.cpp that ``make llama-server`` unpacked (tools/build_llama_server.sh)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamwatch" / "llama.cpp"
    found = sorted(cache.glob("src-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    return found[-1] if found else None


def to_gguf(folder: Path, convert: Path) -> tuple[Path, Path]:
    """(text model, mmproj) GGUF files of a checkpoint folder, in ``folder/gguf``."""
    out = folder / "gguf"
    out.mkdir(exist_ok=True)
    model, mmproj = out / "model.gguf", out / "mmproj.gguf"
    for target, extra in ((model, []), (mmproj, ["--mmproj"])):
        cmd = [sys.executable, "-c", _CONVERT, str(convert.parent), str(convert), str(folder), "--outfile", str(target), "--outtype", "f32"]
        done = subprocess.run([*cmd, *extra], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    if not mmproj.is_file():  # the converter prefixes the projector's name with "mmproj-"
        prefixed = sorted(out.glob("mmproj-*.gguf"))
        if not prefixed:
            raise RuntimeError(f"the converter wrote no mmproj file in {out}")
        prefixed[0].rename(mmproj)
    return model, mmproj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--arch", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl"])
    ap.add_argument("--thinking", action="store_true", help="chat template opens a <think> block")
    ap.add_argument("--vision-depth", type=int, default=2, help="Qwen2.5-VL vision blocks (--gguf: 4)")
    ap.add_argument("--gguf", action="store_true", help="also write gguf/model.gguf + gguf/mmproj.gguf (Qwen2.5-VL, depth 4)")
    ap.add_argument("--convert", type=Path, help="llama.cpp's convert_hf_to_gguf.py (default: the one `make llama-server` unpacked)")
    a = ap.parse_args()
    if a.gguf:
        if a.arch != "qwen2_5_vl":
            raise SystemExit("--gguf converts a Qwen2.5-VL checkpoint: add --arch qwen2_5_vl")
        convert = a.convert or default_convert_script()
        if convert is None:
            raise SystemExit("no convert_hf_to_gguf.py: run `make llama-server` first, or pass --convert PATH")
        folder = build(a.out, a.arch, a.thinking, vision_depth=max(4, a.vision_depth))
        for path in to_gguf(folder, convert):
            print(path)
        return
    print(build(a.out, a.arch, a.thinking, vision_depth=a.vision_depth))


if __name__ == "__main__":
    main()

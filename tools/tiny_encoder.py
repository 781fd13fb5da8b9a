"""Build tiny random-weight CLIP, Chinese-CLIP or SigLIP checkpoints in a folder, offline.

Real architectures, a real (tiny) tokenizer and the real image processor configuration, so the
encoder exporter loads them exactly as it loads openai/clip-vit-base-patch32,
OFA-Sys/chinese-clip-vit-base-patch16 or google/siglip-base-patch16-224 from a local folder.

    python tools/tiny_encoder.py OUT_DIR [--arch clip|chinese_clip|siglip]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CORPUS = ["a photo of a cat", "a concert stage", "a person in hanfu", "a brand logo", "一只猫", "演唱会舞台", "汉服", "标志"] * 30


def _bpe_tokenizer(specials: list[str], vocab: int = 300):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS, trainer)
    return raw


def build(out: Path, arch: str = "clip", seed: int = 0, size: str = "tiny") -> Path:
    """``size="base"`` gives the real ViT-B/32 (CLIP) shape with random weights: real compute cost, for benchmarks."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    vision: dict[str, object] = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    )
    text: dict[str, object] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    side, proj = 64, 16
    if size == "base":  # ViT-B/32 vision tower, CLIP-base text tower
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32)
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        side, proj = 224, 512
    if arch == "clip":
        from transformers import CLIPConfig, CLIPModel
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        raw = _bpe_tokenizer(["<|startoftext|>", "<|endoftext|>"])
        bos, eos = raw.token_to_id("<|startoftext|>"), raw.token_to_id("<|endoftext|>")
        raw.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)]
        )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
        )
        cfg = CLIPConfig(
            text_config=dict(text, vocab_size=len(tok), max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
            vision_config=vision,
            projection_dim=proj,
        )
        model = CLIPModel(cfg)
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    elif arch == "chinese_clip":
        from tokenizers import Tokenizer, models, normalizers
        from tokenizers import pre_tokenizers as pt
        from transformers import BertTokenizerFast, ChineseCLIPConfig, ChineseCLIPModel
        from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

        chars = sorted({c for line in CORPUS for c in line.replace(" ", "")} | set("abcdefghijklmnopqrstuvwxyz"))
        vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars])}
        raw = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        raw.normalizer = normalizers.BertNormalizer(lowercase=True)
        raw.pre_tokenizer = pt.BertPreTokenizer()
        raw.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tok = BertTokenizerFast(
            tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
        )
        cfg = ChineseCLIPConfig(
            text_config=dict(text, vocab_size=len(vocab), max_position_embeddings=64, pad_token_id=0),
            vision_config=vision,
            projection_dim=16,
        )
        model = ChineseCLIPModel(cfg)
        image_processor = ChineseCLIPImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64})
    elif arch == "siglip":
        from transformers import SiglipConfig, SiglipModel
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        raw = _bpe_tokenizer(["<pad>", "</s>", "<unk>"])
        eos = raw.token_to_id("</s>")
        raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=16)
        cfg = SiglipConfig(
            text_config=dict(text, vocab_size=len(tok), max_position_embeddings=16, projection_size=32, pad_token_id=eos, eos_token_id=eos),
            vision_config=vision,
        )
        model = SiglipModel(cfg)
        image_processor = SiglipImageProcessorPil(size={"height": 64, "width": 64})
    else:
        raise SystemExit(f"unknown arch {arch!r} (clip, chinese_clip or siglip)")
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    # transformers 5 names the generic fast tokenizer "TokenizersBackend"; 4.x (optimum-onnx's
    # environment) knows it as PreTrainedTokenizerFast, which 5 still accepts
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    if tok_cfg.get("tokenizer_class") == "TokenizersBackend":
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(tok_cfg, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--arch", default="clip", choices=["clip", "chinese_clip", "siglip"])
    ap.add_argument("--size", default="tiny", choices=["tiny", "base"], help="base: CLIP ViT-B/32 shape (CLIP only)")
    a = ap.parse_args()
    print(build(a.out, a.arch, size=a.size))


if __name__ == "__main__":
    main()

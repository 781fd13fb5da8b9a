#!/usr/bin/env python3
"""Export a CLIP / Chinese-CLIP / SigLIP checkpoint to ONNX: the same as ``streamwatch export-encoder``.

python tools/export_encoder.py openai/clip-vit-base-patch32 --int8 --fp16
python tools/export_encoder.py /models/chinese-clip-vit-base-patch16 -o models/encoders/cn-clip
"""

from __future__ import annotations

import sys

from streamwatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-encoder", *sys.argv[1:]]))

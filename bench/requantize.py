"""Write a copy of the bundled GGUF (SmolLM2-135M-Instruct, Q4_1) requantized to another format.

For measuring what the weight format costs llama.cpp (`bench/decode_steps.py --model OUT`); the
server never uses it. Requantizing adds error on top of Q4_1's (Q8_0 a little, Q4_0 more), so the
copy is not the same model bit for bit.

    .venv/bin/python bench/requantize.py q8_0 /tmp/smollm2-q8_0.gguf
"""

from __future__ import annotations

import argparse
import ctypes

import llama_cpp

from modelhost.engine.llama_model import bundled_model_path

FORMATS = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(FORMATS))
    parser.add_argument("out")
    args = parser.parse_args()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FORMATS[args.format]
    params.allow_requantize = True  # the source is already quantized
    code = llama_cpp.llama_model_quantize(str(bundled_model_path()).encode(), args.out.encode(), ctypes.byref(params))
    if code != 0:
        raise SystemExit(f"llama_model_quantize failed ({code})")


if __name__ == "__main__":
    main()

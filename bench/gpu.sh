#!/usr/bin/env bash
# One command for a CUDA machine: bench/gpu.py (its docstring says what it measures), from any folder.
#     bash bench/gpu.sh [--steps=tests,char,gpt2,xl] [--out=FILE]
exec python "$(dirname "$0")/gpu.py" "$@"

#!/usr/bin/env bash
# Rebuilds the built-in model models/tiny-kjv.gguf (+ models/tokenizer.model) from Debian packages:
#   corpus (bible-kjv-text) -> tokenizer (spm_train) -> training (python3-torch) -> HF dir -> `mixtral convert`.
# Deterministic; about 25-45 minutes on 2 shared cores. Usage (repository root, after tools/install-deps.sh and a
# release build): bash tools/train_tiny/make_model.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/tiny-kjv}
mkdir -p "$work"
py=/usr/bin/python3   # Debian's: torch, numpy, sentencepiece
$py tools/train_tiny/corpus.py "$work/data"
# Mistral's SentencePiece settings (BPE, identity normalisation, dummy prefix, digits split, byte fallback).
spm_train --input="$work/data/train.txt" --model_prefix="$work/data/tok" --model_type=bpe --vocab_size=4096 \
  --normalization_rule_name=identity --add_dummy_prefix=true --remove_extra_whitespaces=false \
  --split_digits=true --allow_whitespace_only_pieces=true --byte_fallback=true \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --character_coverage=1.0 --max_sentence_length=100000 \
  --input_sentence_size=0 --shuffle_input_sentence=false --num_threads=1 >"$work/spm.log" 2>&1
$py tools/train_tiny/train.py --data "$work/data" --out "$work/hf" | tee "$work/train.log"
build/release/apps/cli/mixtral convert "$work/hf" -o models/tiny-kjv.gguf --type f16
cp "$work/data/tok.model" models/tokenizer.model
cp "$work/hf/training.json" models/training.json
cp "$work/data/provenance.json" models/provenance.json
ls -l models/

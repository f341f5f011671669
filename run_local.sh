#!/usr/bin/env bash
# The main job on the embedded default, on the DirectRunner:
#   sample data -> encode corpus + queries -> hybrid candidates (exact dense
#   top-k + exact BM25 top-k) -> (default cross-encoder, built once) -> rerank
#   with guarded auto fusion tuned on the train split -> mine training pairs ->
#   evaluate on the held-out queries.
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

echo "== 1/6 sample data (written by the project) -> $out/sample"
"$py" -m pipelines.cli sample-data --output "$out/sample"

# A re-run re-encodes only what changed and reuses the scores of unchanged pairs.
previous() { if [ -f "$1/manifest.json" ]; then printf '%s\n' --previous "$1"; fi; }

echo "== 2/6 encode corpus with the packaged all-MiniLM-L6-v2"
mapfile -t prev < <(previous "$out/corpus_embeddings")
"$py" -m pipelines.cli encode --input "$out/sample/corpus.parquet" --output "$out/corpus_embeddings" \
  --title-column title "${prev[@]}" "$@"
echo "== 3/6 encode queries"
mapfile -t prev < <(previous "$out/query_embeddings")
"$py" -m pipelines.cli encode --input "$out/sample/queries.parquet" --output "$out/query_embeddings" \
  --id-column query_id "${prev[@]}" "$@"

echo "== 4/6 dense + BM25 top-k -> cross-encoder -> fusion (+ metrics on the held-out queries)"
echo "   (no --cross-encoder: the product builds its default once, fine-tuned offline from"
echo "    the packaged all-MiniLM-L6-v2, cached under ${BEAM_RERANK_CACHE:-~/.cache/beam-rerank});"
echo "   fusion weights: auto, tuned on the train split's judgments, guarded; a re-run reuses"
echo "   the cross-encoder scores of unchanged pairs (--previous)"
mapfile -t prev < <(previous "$out/ranked")
"$py" -m pipelines.cli rerank --queries "$out/sample/queries.parquet" --corpus "$out/sample/corpus.parquet" \
  --doc-title-column title --query-embeddings "$out/query_embeddings" \
  --corpus-embeddings "$out/corpus_embeddings" --bm25 --top-k 10 --top-n 5 \
  --fusion linear --fusion-weights auto --tune-qrels "$out/sample/qrels_train.parquet" \
  --qrels "$out/sample/qrels.parquet" --output "$out/ranked" --trec "${prev[@]}" "$@"

echo "== 5/6 mine training pairs from the ranked candidates"
"$py" -m pipelines.cli mine --ranked "$out/ranked" --queries "$out/sample/queries.parquet" \
  --corpus "$out/sample/corpus.parquet" --doc-title-column title --qrels "$out/sample/qrels.parquet" \
  --format labeled-pair,pair,triplet --num-negatives 3 --dev-fraction 0.25 --output "$out/pairs" "$@"

echo "== 6/6 evaluate (the tuning queries are left out)"
"$py" -m pipelines.cli evaluate --ranked "$out/ranked" --qrels "$out/sample/qrels.parquet"
echo
echo "outputs: $out/corpus_embeddings $out/query_embeddings $out/ranked (ranked lists, candidates/,"
echo "         metrics.png, run.trec) $out/pairs (training pairs per format)"

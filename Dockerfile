# syntax=docker/dockerfile:1
# mono-llm server image: `mono-llm serve` with every extra installed.
#
#   docker build -t mono-llm .
#   docker run --gpus all -p 8000:8000 -v /path/to/models:/models mono-llm /models/my-model --dtype auto
#
# GPU (default): PyPI's torch wheels carry the CUDA runtime; the host needs the NVIDIA driver
# and container toolkit. CPU-only image (no CUDA download, ~1 GB smaller):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t mono-llm:cpu .
ARG PYTHON_VERSION=3.12

# ---- stage 1: one wheel per distribution, built from this checkout
FROM python:${PYTHON_VERSION}-slim AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY packages ./packages
RUN pip install --no-cache-dir build \
 && for p in kernels core multimodal audio openai-api; do \
        python -m build --wheel --outdir /wheels "packages/$p" || exit 1; \
    done \
 && python -m build --wheel --outdir /wheels .

# ---- stage 2: the runtime
FROM python:${PYTHON_VERSION}-slim
ARG TORCH_SPEC="torch>=2.11"
ARG TORCH_INDEX_URL=""
ARG EXTRAS="all"
COPY --from=wheels /wheels /tmp/wheels
# torch first, from the chosen index; then mono-llm and its extras from the local wheels.
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" \
 && pip install --no-cache-dir --find-links /tmp/wheels "mono-llm[${EXTRAS}]" \
 && rm -rf /tmp/wheels \
 && useradd --create-home --uid 1000 mono
USER mono
ENV PYTHONUNBUFFERED=1 \
    MONO_LLM_CACHE_DIR=/home/mono/.cache/mono-llm
EXPOSE 8000
# Liveness: /health is 200 while the engines live (503 once one has died). Model loading can
# take minutes, hence the start period. Readiness for a load balancer is /ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
# SIGTERM drains: in-flight requests finish (up to --timeout-graceful-shutdown), new ones get 503.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mono-llm", "serve"]

# syntax=docker/dockerfile:1
# The huayu gateway: slim, non-root, the gateway package only (vLLM runs in its own official image).
# Built by deploy/docker-compose.yml; by hand: docker build -t huayu-gateway .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/huayu
WORKDIR /src
# Dependencies first, in their own layer, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir gateway serving loadtest \
 && /opt/huayu/bin/pip install . \
 && /opt/huayu/bin/pip uninstall -y huayu
COPY gateway ./gateway
COPY serving ./serving
COPY loadtest ./loadtest
RUN /opt/huayu/bin/pip install --no-deps . \
 && /opt/huayu/bin/huayu --help >/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 huayu \
 && useradd --system --uid 10001 --gid huayu --home-dir /app --no-create-home --shell /usr/sbin/nologin huayu \
 && mkdir -p /app/.data \
 && chown huayu:huayu /app/.data
COPY --from=build /opt/huayu /opt/huayu
WORKDIR /app
ENV PATH=/opt/huayu/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HUAYU_HOST=0.0.0.0 \
    HUAYU_PORT=8080
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HUAYU_PORT', '8080') + '/healthz', timeout=2)"]
CMD ["huayu", "serve"]

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/gateway

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
COPY comfy_emulator ./comfy_emulator
RUN pip install . && useradd --system --home /srv/gateway gateway && mkdir -p /data && chown gateway /data

USER gateway
ENV GATEWAY_DATABASE_URL=sqlite+aiosqlite:////data/gateway.db \
    GATEWAY_STORAGE_DIR=/data/outputs \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["comfy-gateway", "serve"]

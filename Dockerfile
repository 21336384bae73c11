# HealthSync app image: Streamlit on port 8501, run as a non-root user (uid 1000).
#   docker build -t healthsync .
#   docker run -p 8501:8501 -v healthsync-data:/app/data -v healthsync-home:/app/.healthsync healthsync
# or `docker compose up` (docker-compose.yml: the app and the warm engine side by side).
# The admin password is printed once in the container log on first start.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. torch 2.13.0 is pinned; pass
# --build-arg TORCH_INDEX=<PyTorch's CPU wheel index> to keep the multi-GB CUDA build out.
ARG TORCH_INDEX=""
COPY requirements.txt .
RUN pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r requirements.txt

COPY pyproject.toml README.md app.py ./
COPY scripts ./scripts
COPY healthsync ./healthsync
COPY simulation ./simulation
COPY pages ./pages
COPY .streamlit ./.streamlit
COPY data/README.md ./data/README.md
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 healthsync \
    && mkdir -p /app/data /app/.healthsync \
    && chown -R healthsync:healthsync /app

# Numeric, so that the host (and Kubernetes' runAsNonRoot) can tell it is not root.
USER 1000:1000
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]

# Generate the demo federation on first start, then serve the app.
CMD ["sh", "-c", "[ -f data/demo/federation.json ] || healthsync data generate --out data/demo; healthsync engine start --no-wait; exec streamlit run app.py --server.port 8501 --server.address 0.0.0.0 --server.headless true"]

# One image for both roles: the learner and the actors (see docker-compose.yml).
#
# CPU PyTorch by default. For NVIDIA GPUs, pick a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t keisei:cuda .
# (the wheels bundle the CUDA runtime; the host needs the NVIDIA driver and container
# toolkit), or a CUDA base image with Python 3.11+ via --build-arg BASE=...
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# Shogi engines as keisei-eval opponents (Debian installs them in /usr/games), e.g.
#   docker build --build-arg ENGINES="fairy-stockfish gnushogi gpsshogi sjaakii" .
ARG ENGINES=""
RUN if [ -n "${ENGINES}" ]; then \
        apt-get update && apt-get install -y --no-install-recommends ${ENGINES} \
        && rm -rf /var/lib/apt/lists/*; \
    fi

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first and pinned, so installing Keisei never resolves another build
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"

COPY pyproject.toml README.md LICENSE ./
COPY keisei ./keisei
COPY learner ./learner
COPY workers ./workers
COPY pretrain ./pretrain
# with TensorBoard and plotting (keisei-plot), so metrics can be read from the image
RUN pip install --no-cache-dir ".[plot,tensorboard]"
COPY configs ./configs

# Unprivileged user; run directories live under /app/runs (a volume in compose).
RUN useradd --create-home keisei && mkdir -p /app/runs && chown keisei /app/runs
USER keisei

CMD ["keisei-learner", "--help"]

# rtserve server image: builds the wheel (Rust toolchain, maturin), then installs it in a
# slim Python image. Used by deploy/kubernetes/rtserve-kserve.yaml; see docs/serving.md.
#
#   docker build -t rtserve:0.1.0 .
#   docker run --rm -p 8080:8080 -v /path/to/all-MiniLM-L6-v2:/mnt/models:ro rtserve:0.1.0 serve minilm=/mnt/models --host 0.0.0.0 --port 8080

FROM python:3.12-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir "maturin>=1.9.4,<2" && maturin build --release --out /wheels

FROM python:3.12-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 1000 rtserve
USER 1000
EXPOSE 8080
ENTRYPOINT ["python", "-m", "rtserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

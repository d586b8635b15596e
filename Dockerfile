# stream-learner as a container: `docker build -t stream-learner .`, then
#   docker run --rm -e STREAM_LEARNER_BOOTSTRAP=broker:9092 -p 9108:9108 stream-learner run \
#     --config /app/examples/config.toml
# docker-compose.kafka.yml builds it and runs the whole stack (Kafka, topics, service,
# Prometheus, Grafana).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_learner/ stream_learner/
RUN pip install . && rm -rf build stream_learner.egg-info
# `topics apply` reads ./topics/topics.toml (relative to the working directory) once the
# package is installed; examples/ holds the default config.
COPY topics/ topics/
COPY examples/ examples/

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin stream-learner
USER stream-learner

# Inside a container the metrics/health endpoints must listen beyond loopback to be scraped
# (the example config binds 127.0.0.1 for hosts).
ENV STREAM_LEARNER__SERVICE__HTTP_HOST=0.0.0.0
EXPOSE 9108

ENTRYPOINT ["stream-learner"]
CMD ["run", "--config", "/app/examples/config.toml"]

# The streamfn worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamfn ./streamfn
COPY connectors ./connectors
COPY examples ./examples
RUN pip install --no-cache-dir .
ENTRYPOINT ["streamfn"]

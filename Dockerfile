# The streamq worker and CLI. Built by docker-compose.yml; also usable alone:
#   docker build -t streamq:local . && docker run --rm streamq:local streamq --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package build reads, so editing tests or docs does not invalidate the install layer.
COPY pyproject.toml README.md LICENSE ./
COPY streamq ./streamq
RUN pip install . && useradd --create-home --uid 10001 streamq

USER streamq
CMD ["streamq", "--help"]

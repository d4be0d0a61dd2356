# The Celery worker of docker-compose.yml: Celery and kombu pinned, built
# once (docker compose build, or the first docker compose up), run as an
# unprivileged user. The tasks module (integration/harness/celeryapp) is
# mounted read-only at /app by the compose file, not copied, so editing
# tasks.py needs only a restart of the worker.
FROM python:3.13-slim

ARG CELERY_VERSION=5.6.3
ARG KOMBU_VERSION=5.6.2

RUN pip install --no-cache-dir --disable-pip-version-check \
        "celery==${CELERY_VERSION}" "kombu==${KOMBU_VERSION}" \
    && useradd --system --create-home --uid 10001 --user-group celery

USER celery
WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

CMD ["celery", "-A", "tasks", "worker", "-E", "-l", "info"]

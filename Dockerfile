FROM python:3.11-slim
WORKDIR /app
# The same pinned tree as `make run`: every package from uv.lock, checked against its hashes.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-install-project --no-cache
COPY project ./project
COPY collections_app ./collections_app
COPY manage.py ./
RUN uv sync --frozen --no-editable --no-cache
ENV DJANGO_SETTINGS_MODULE=project.settings PYTHONUNBUFFERED=1
# Static files are collected into the image (DEBUG on for this step only: no secret needed);
# the processes run as an unprivileged user that owns nothing but them.
RUN DJANGO_DEBUG=1 python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --system --uid 10001 --no-create-home app \
    && chown -R app /app/staticfiles
USER app
EXPOSE 8000
CMD ["gunicorn", "project.wsgi", "--bind", "0.0.0.0:8000"]

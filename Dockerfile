FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY project ./project
COPY collections_app ./collections_app
COPY manage.py ./
RUN pip install --no-cache-dir .
ENV DJANGO_SETTINGS_MODULE=project.settings PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["gunicorn", "project.wsgi", "--bind", "0.0.0.0:8000"]

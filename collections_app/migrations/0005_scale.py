"""Storing a request is one INSERT: the database points the registry's meters at their newest
request itself (a trigger), so the caller's transaction has no second statement. And the
indexes the admin and the dashboard need to answer at a million requests."""

from django.db import migrations, models

from ._vendor_sql import per_vendor

# Each stored request becomes the last request of the registry's meters it names (the newest
# INSERT wins; a bulk INSERT fires it row by row, in order).
LAST_REQUEST = {
    "postgresql": """
CREATE OR REPLACE FUNCTION collections_mark_last_request() RETURNS trigger AS $$
BEGIN
  UPDATE collections_app_meter SET last_request_id = NEW.id
   WHERE uid IN (SELECT jsonb_array_elements_text(NEW.meters));
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER collections_mark_last_request
  AFTER INSERT ON collections_app_collectionrequest
  FOR EACH ROW EXECUTE FUNCTION collections_mark_last_request();
""",
    "sqlite": """
CREATE TRIGGER collections_mark_last_request
  AFTER INSERT ON collections_app_collectionrequest
BEGIN
  UPDATE collections_app_meter SET last_request_id = NEW.id
   WHERE uid IN (SELECT value FROM json_each(NEW.meters));
END;
""",
}
DROP_LAST_REQUEST = {
    "postgresql": """
DROP TRIGGER IF EXISTS collections_mark_last_request ON collections_app_collectionrequest;
DROP FUNCTION IF EXISTS collections_mark_last_request();
""",
    "sqlite": "DROP TRIGGER IF EXISTS collections_mark_last_request;",
}
# Search by meter uid (`meters @> '["uid"]'`): a GIN index, on PostgreSQL.
METERS_GIN = {
    "postgresql": "CREATE INDEX IF NOT EXISTS request_meters_gin "
    "ON collections_app_collectionrequest USING gin (meters jsonb_path_ops);"
}
DROP_METERS_GIN = {"postgresql": "DROP INDEX IF EXISTS request_meters_gin;"}


class Migration(migrations.Migration):
    dependencies = [("collections_app", "0004_tracking")]

    operations = [
        migrations.RunPython(per_vendor(LAST_REQUEST), per_vendor(DROP_LAST_REQUEST)),
        migrations.RunPython(per_vendor(METERS_GIN), per_vendor(DROP_METERS_GIN)),
        migrations.RemoveIndex(model_name="collectionrequest", name="status_created"),
        migrations.RemoveIndex(model_name="collectionrequest", name="failed_error"),
        migrations.AddIndex(
            model_name="collectionrequest",
            index=models.Index(
                fields=["status", "-created"], include=("collection_outcome",), name="status_created"
            ),
        ),
        migrations.AddIndex(
            model_name="collectionrequest",
            index=models.Index(fields=["status", "updated"], name="status_updated"),
        ),
        migrations.AddIndex(
            model_name="collectionrequest",
            index=models.Index(
                condition=models.Q(("status", "failed")),
                fields=["error", "updated"],
                name="failed_error",
            ),
        ),
    ]

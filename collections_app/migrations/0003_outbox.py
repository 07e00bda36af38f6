"""Dispatch through the table (a transactional outbox): `announced_at` marks rows a relay has
told the workers about, and on PostgreSQL a statement trigger NOTIFYs the relays whenever
requests are stored or rescheduled."""

from django.db import migrations, models

TRIGGER = """
CREATE OR REPLACE FUNCTION collections_notify_due() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('collections_due', '');
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER collections_notify_due
  AFTER INSERT OR UPDATE OF next_attempt_at ON collections_app_collectionrequest
  FOR EACH STATEMENT EXECUTE FUNCTION collections_notify_due();
"""
DROP = """
DROP TRIGGER IF EXISTS collections_notify_due ON collections_app_collectionrequest;
DROP FUNCTION IF EXISTS collections_notify_due();
"""


def on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("collections_app", "0002_tokens_and_meters")]

    operations = [
        migrations.AddField(
            model_name="collectionrequest",
            name="announced_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RenameField(
            model_name="attempt", old_name="batch_size", new_name="requests_in_call"
        ),
        migrations.RunPython(on_postgresql(TRIGGER), on_postgresql(DROP)),
    ]

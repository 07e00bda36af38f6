"""Raw SQL for the migrations that need it, per database vendor (not a migration itself: the
loader skips modules whose names start with an underscore)."""


def per_vendor(sql):
    """A RunPython function running sql[vendor]: one statement, or a list of them (SQLite
    takes one at a time). A vendor with no entry gets nothing; one the service does not run
    on is refused."""

    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in ("postgresql", "sqlite"):
            raise RuntimeError(f"no trigger for {vendor}: use PostgreSQL (or SQLite for make run)")
        statements = sql.get(vendor, [])
        for statement in [statements] if isinstance(statements, str) else statements:
            schema_editor.execute(statement)

    return run

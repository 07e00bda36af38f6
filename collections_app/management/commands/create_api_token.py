from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from collections_app.permissions import TRIGGER_PERMISSIONS
from collections_app.services import tokens


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME and print it once, alone on the last line. "
        "Only its SHA-256 digest is stored: it cannot be shown again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for (max 100 chars).")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self.find_user(options["username"])
        if len(options["name"]) > 100:
            raise CommandError("--name is longer than 100 characters.", returncode=2)
        token, raw = tokens.issue(user, options["name"])
        missing = [p for p in TRIGGER_PERMISSIONS if not user.has_perm(p)]
        if missing:
            self.stderr.write(
                f"Note: {user} cannot trigger collections through the API until given "
                f"{', '.join(missing)}."
            )
        self.stdout.write(
            f"API token {token.prefix}… for {user} created. It is shown only now; store it:"
        )
        self.stdout.write(raw)

    def find_user(self, username: str) -> Any:
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist:
            raise CommandError(f"No user named {username!r}.", returncode=2) from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive.", returncode=2)
        return user

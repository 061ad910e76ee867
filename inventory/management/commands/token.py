"""`manage.py token create NAME --scope read|write|admin` (prints the token alone), `token revoke NAME`,
`token list`."""

from django.core.management.base import BaseCommand, CommandError

from inventory import tokens
from inventory.errors import TokenNameTaken
from inventory.models import Token


class Command(BaseCommand):
    help = "Create, revoke and list API tokens."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="make a token and print it (shown only this once)")
        create.add_argument("name")
        create.add_argument(
            "--scope",
            choices=[Token.READ, Token.WRITE, Token.ADMIN],
            required=True,
            help="read: GET but webhooks; write: everything but webhooks; admin: everything",
        )
        revoke = actions.add_parser("revoke", help="revoke the active token with this name")
        revoke.add_argument("name")
        actions.add_parser("list", help="list active tokens (never their secrets)")

    def handle(self, *args, action, **options):
        if action == "create":
            try:
                token = tokens.token_create(name=options["name"], scope=options["scope"])
            except TokenNameTaken as exc:
                raise CommandError(exc.message) from exc
            self.stdout.write(token)
        elif action == "revoke":
            if not tokens.token_revoke(name=options["name"]):
                raise CommandError(f"no active token named {options['name']!r}")
            self.stdout.write(f"revoked {options['name']}")
        else:
            for token in Token.objects.filter(revoked_at__isnull=True).order_by("name"):
                self.stdout.write(
                    f"{token.name}\t{token.scope}\tcreated {token.created_at:%Y-%m-%d %H:%M:%S}Z"
                )

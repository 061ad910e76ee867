from django.apps import AppConfig
from django.db.models.signals import post_migrate


class InventoryConfig(AppConfig):
    name = "inventory"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from inventory import timeouts

        # Every migrate (so every start of `make serve`) sets PostgreSQL's wait bounds anew.
        post_migrate.connect(timeouts.role_defaults_apply, sender=self)

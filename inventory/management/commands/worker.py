"""`manage.py worker`: the process beside the web server (inventory.worker). `make serve` and
`make run` start one and start it again when it exits (config/serve.py); run it yourself, under
a supervisor that restarts it, where servers run with WORKER=0. Several may run against one
database: one works at a time. SIGTERM or SIGINT stops it after the duty in progress."""

import signal

from django.core.management.base import BaseCommand

from inventory.worker import Worker


class Command(BaseCommand):
    help = "Run the background duties (hold expiry, webhook delivery, pruning) until SIGTERM or SIGINT."

    def add_arguments(self, parser):
        parser.add_argument(
            "--parent",
            type=int,
            metavar="PID",
            help="stop when process PID (the server that started this worker) is gone",
        )

    def handle(self, *args, parent, **options):
        worker = Worker(parent_pid=parent)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        worker.run()

"""What ``extauthz serve`` runs: one serving process, or a supervisor and N workers.

``python -m extauthz.serving.main`` is a worker process of ``--workers N`` (workers.py spawns it
with its settings in the environment).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from extauthz import compiled
from extauthz.logs import setup_logging
from extauthz.policy import PolicyError
from extauthz.serving import workers
from extauthz.serving.service import running
from extauthz.settings import Settings

log = logging.getLogger("extauthz.serving.main")


def serve(settings: Settings) -> int:
    """Run the service until SIGTERM/SIGINT. Raises PolicyError when the first load fails.

    ``--workers N`` (N > 1) runs a supervisor and N worker processes (workers.py)."""
    if settings.workers > 1:
        return workers.supervise(settings)
    return serve_worker(settings)


def serve_worker(settings: Settings, worker: int | None = None) -> int:
    """One serving process on ``settings.listen`` with the chosen transport."""
    stale = compiled.stale_modules()
    if stale:  # the compiled code would run, not the source: refuse
        log.error(
            "compiled modules not built from their current source (make compiled, or make pure): %s",
            ", ".join(stale),
        )
        return 2
    log.info("hot path: %s", compiled.summary())
    with running(settings, worker) as service:
        if settings.transport == "h2corn":
            from extauthz.serving.h2corn import serve_h2corn

            return serve_h2corn(service, settings)
        from extauthz.serving.grpcio import serve_grpcio

        return serve_grpcio(service, settings)


def worker_main() -> int:
    """A worker process of ``--workers N``."""
    settings = Settings(**json.loads(os.environ[workers.ENV_SETTINGS]))
    index = int(os.environ[workers.ENV_INDEX])
    setup_logging(settings.log_level)
    workers.exit_with_parent()
    try:
        return serve_worker(settings, worker=index)
    except PolicyError as exc:
        log.error("worker %d cannot load policies: %s", index, exc)
        return 2
    except OSError as exc:
        log.error("worker %d: %s", index, exc)
        return 2


if __name__ == "__main__":
    sys.exit(worker_main())

"""Entry point: a Celery worker consuming ``gpu.pytorch`` (one per GPU; set LEM_DEVICE=cuda:N)."""

from lem_shared.runtime.worker import make_worker, worker_argv
from lem_shared.wire.queues import Backend

app = make_worker(Backend.PYTORCH, "lem_worker_pytorch.adapter:TransformersAdapter")


def main() -> None:
    app.worker_main(worker_argv(Backend.PYTORCH))


if __name__ == "__main__":
    main()

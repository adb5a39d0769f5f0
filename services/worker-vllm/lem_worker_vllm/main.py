"""Entry point: a Celery worker consuming ``gpu.vllm`` (one per GPU; set LEM_DEVICE=cuda:N or reserve one GPU)."""

from lem_shared.runtime.worker import make_worker, worker_argv
from lem_shared.wire.queues import Backend

ADAPTER = "lem_worker_vllm.adapter:VllmAdapter"
app = make_worker(Backend.VLLM, ADAPTER)


def main() -> None:
    app.worker_main(worker_argv(Backend.VLLM))


if __name__ == "__main__":
    main()

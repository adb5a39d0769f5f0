"""Entry point: a Celery worker consuming ``gpu.trtllm`` (one per GPU; set LEM_DEVICE=cuda:N or reserve one GPU)."""

from lem_shared.runtime.worker import make_worker, worker_argv
from lem_shared.wire.queues import Backend

ADAPTER = "lem_worker_trt.adapter:TrtLlmAdapter"
app = make_worker(Backend.TRTLLM, ADAPTER)


def main() -> None:
    app.worker_main(worker_argv(Backend.TRTLLM))


if __name__ == "__main__":
    main()

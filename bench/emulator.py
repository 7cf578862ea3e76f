"""What the emulator's speed-ups (ami/local/emulator.py) save, per SQS call, in moto's own code.

    .venv/bin/python -m bench.emulator [--depth 1000]

Prints the milliseconds one send, one receive and one attribute read cost moto's SQS backend
in this process, with an empty-ish queue and with `--depth` messages waiting, first as moto
ships and then with the speed-ups installed. Over HTTP each call costs more (routing,
serialisation), and the emulator serves every process of the stack from one interpreter.
"""

import argparse
import gc
import os
import time
from collections.abc import Callable

import moto.sqs.models  # noqa: E402

from ami.local import emulator  # noqa: E402

CALLS = 20


def per_call_ms(call: Callable[[], object]) -> float:
    # The collector paused: one full collection of this process's heap (every message moto holds)
    # landing in a 20-call window would be most of what it measures, and where it lands moves
    # with every change to the calls' allocations.
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(CALLS):
            call()
        return (time.perf_counter() - started) / CALLS * 1000
    finally:
        gc.enable()


def measure(depth: int, label: str) -> None:
    backend = moto.sqs.models.sqs_backends["123456789012"]["us-east-1"]
    name = f"bench-{label.replace(' ', '-')}"
    backend.create_queue(name, VisibilityTimeout="60")
    queue = backend.get_queue(name)
    body = "x" * 700  # about a facesite task message
    for wanted in (1, depth):
        while len(queue._messages) < wanted:
            backend.send_message(name, body)
        send = per_call_ms(lambda: backend.send_message(name, body))
        read = per_call_ms(lambda: backend.get_queue_attributes(name, ["All"]))
        receive = per_call_ms(lambda: backend.receive_message(name, 1, 0, 60))
        print(f"{label:<14}{wanted:>8}{send:>10.2f}{receive:>12.2f}{read:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1000)
    options = parser.parse_args()
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    print(f"{'moto':<14}{'waiting':>8}{'send ms':>10}{'receive ms':>12}{'attrs ms':>12}")
    measure(options.depth, "as shipped")
    emulator.install_speedups()
    measure(options.depth, "sped up")


if __name__ == "__main__":
    main()

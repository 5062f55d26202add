"""One model copy per device: the audit's and the replay's generations split across several GPUs.

`--device cuda:0,cuda:1`: this process loads the model on the first device, as with one device (its copy renders
the prompts and measures the identity margins); each further device gets a worker process of its own (spawned:
CUDA cannot be forked) that loads its own copy and generates its share of the grid. The grid is split by group
(prompt x system prompt x temperature: the samples of a group share one request, seeds seed+i), round-robin in grid
order, so each reply is the one its seed gives on one device, within the engine's bf16 near-ties between batch-mates.
Replies come back as they finish and are logged and scored one at a time, as with one device; a worker that fails
stops the run with its device named, and the replies already logged are kept for --resume.

Python's multiprocessing carries the work here (no library splits an inference grid across local GPUs without a
serving stack: accelerate splits training batches, vLLM's data-parallel mode is a server).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queues
import threading
from typing import Callable, Sequence

from selfid.errors import SelfidError
from selfid.model.load import load_model, pick_device


def parse_devices(device: str) -> list[str]:
    """"cuda:0,cuda:1" -> ["cuda:0", "cuda:1"]; one device -> [it]. Each must exist on this machine."""
    devices = [d.strip() for d in str(device).split(",")]
    if len(devices) == 1:
        return devices
    if any(not d or d == "auto" for d in devices):
        raise SelfidError(f"--device {device!r}: name each device of a list (cuda:0,cuda:1), not auto or a blank")
    for d in devices:
        if pick_device(d).type == "cuda" and ":" not in d:  # pick_device: a name torch does not know, a missing GPU
            raise SelfidError(f"--device {device!r}: name each GPU of a list as cuda:N")
    if len({d for d in devices if d != "cpu"}) < len([d for d in devices if d != "cpu"]):
        raise SelfidError(f"--device {device!r}: a GPU is named twice; name each once")
    return devices


def split(items: Sequence, n: int) -> list[list]:
    """The items in `n` shares, whole groups each, round-robin over the groups in the order they first appear."""
    order: dict[tuple, int] = {}
    shares: list[list] = [[] for _ in range(n)]
    for it in items:
        k = order.setdefault(it.group, len(order) % n)
        shares[k].append(it)
    return shares


def _worker(spec: dict, device: str, label: str, items: list, out) -> None:
    """A spawned process: the model on `device`, its share generated (by the primary's backend class, passed by
    reference), each reply put on `out` as it finishes."""
    try:
        from selfid.engine import InProcessEngine  # torch

        loaded = load_model(spec["model"], adapter=spec["adapter"], device=device, dtype=spec["dtype"], progress=False,
                            chat_template=spec["chat_template"])
        backend = spec["backend"](loaded, InProcessEngine(loaded, max_batch_size=spec["batch_size"]),
                                  rows_per_call=spec["rows_per_call"])
        backend.run(items, lambda item, reply: out.put(("reply", item.key, reply)))
        out.put(("done", label, None))
    except BaseException as e:  # reported to the parent, which stops the run naming this device
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        out.put(("error", label, f"{type(e).__name__}: {reason}"))


class MultiDeviceBackend:
    """`primary` (selfid.audit.backends.InProcessBackend on the first device) and one worker process per further
    device, each with a backend of the same class."""

    kind = "inprocess"

    def __init__(self, primary, devices: list[str], spec: dict):
        self.primary, self.devices, self.spec = primary, devices, spec
        self.loaded, self.engine = primary.loaded, primary.engine

    def describe(self) -> dict:
        return {**self.primary.describe(), "devices": list(self.devices)}

    def render(self, messages: list[dict]):
        return self.primary.render(messages)

    def run(self, items: Sequence, on_done: Callable, advance: Callable[[int], None] = lambda n: None) -> None:
        shares = split(items, len(self.devices))
        by_key = {it.key: it for it in items}
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        spec = {**self.spec, "rows_per_call": self.primary.rows_per_call, "backend": type(self.primary)}
        workers = {}  # label (the device; "cpu#2" where one is named twice) -> its process
        for i, (dev, share) in enumerate(zip(self.devices[1:], shares[1:]), 1):
            label = dev if self.devices.count(dev) == 1 else f"{dev}#{i}"
            if share:
                workers[label] = ctx.Process(target=_worker, args=(spec, dev, label, share, out), daemon=True)
        lock = threading.Lock()
        errors: list[str] = []

        def done(item, reply) -> None:
            with lock:
                on_done(item, reply)
                advance(1)

        def drain() -> None:
            try:
                collect()
            except BaseException as e:  # logging a reply failed: the main thread raises it, naming the cause
                errors.append(f"logging their replies: {type(e).__name__}: {e}")

        def collect() -> None:
            left = set(workers)
            while left:
                try:
                    kind, key, payload = out.get(timeout=2.0)
                except queues.Empty:  # a worker that ended without a word (killed, e.g. out of memory)
                    for dev in [d for d in left if not workers[d].is_alive()]:
                        errors.append(f"{dev}: its process ended (exit code {workers[dev].exitcode}) before its share did")
                        left.discard(dev)
                    continue
                if kind == "reply":
                    done(by_key[key], payload)
                else:
                    left.discard(key)
                    if kind == "error":
                        errors.append(f"{key}: {payload}")

        for p in workers.values():
            p.start()
        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        try:
            self.primary.run(shares[0], done)
            drainer.join()
        finally:
            for p in workers.values():
                if p.is_alive():
                    p.terminate()
                p.join(timeout=30)
        if errors:
            raise SelfidError("generation on another device failed (" + "; ".join(errors) + "): the replies already "
                              "logged are kept; fix the device or run on fewer (--device), then --resume")


def several(primary, devices: list[str], model: str, adapter, dtype: str, chat_template, batch_size: int | None):
    """`primary` alone for one device, else a MultiDeviceBackend whose workers load the same model, adapter, dtype
    and chat template on the other devices."""
    if len(devices) == 1:
        return primary
    spec = {"model": model, "adapter": str(adapter) if adapter else None, "dtype": dtype,
            "chat_template": str(chat_template) if chat_template else None, "batch_size": batch_size}
    return MultiDeviceBackend(primary, devices, spec)

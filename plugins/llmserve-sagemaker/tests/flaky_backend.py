"""A test plugin file: the CPU backend, whose step fails for a request seeded 666 (so a test can
kill the engine for real)."""

from llmserve import hookimpl
from llmserve.backends.torch.backend import CpuBackend


class FlakyBackend(CpuBackend):
    def execute(self, batch):
        if any(item.params.seed == 666 for item in batch.items):
            raise RuntimeError("the device fell over")
        return super().execute(batch)


@hookimpl
def llmserve_backends(register):
    register("flaky", FlakyBackend)

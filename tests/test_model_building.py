"""Models are built on the meta device without torch.nn.init, which comes back afterwards."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from llmserve.backends.torch import loader


def test_init_is_skipped_while_building_and_restored_after_overlapping_builds():
    original = nn.init.normal_
    inside, release = threading.Event(), threading.Event()

    def slow_build():
        with loader._no_init():
            inside.set()
            release.wait(10)

    other = threading.Thread(target=slow_build)
    other.start()
    inside.wait(10)
    with pytest.raises(RuntimeError), loader._no_init():
        t = torch.zeros(4)
        assert nn.init.normal_(t) is t and not t.any()  # skipped: still zeros
        raise RuntimeError("a build that fails")
    assert nn.init.normal_ is not original  # the other build is still running
    release.set()
    other.join()
    assert nn.init.normal_ is original
    assert nn.init.normal_(torch.zeros(64)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_loaded_model_is_the_checkpoint(smollm2_dir, dtype):
    from safetensors import safe_open

    from llmserve.arch.hf_config import load_arch_config

    model = loader.load_model(smollm2_dir, load_arch_config(smollm2_dir), dtype, torch.device("cpu"))
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        want = f.get_tensor("model.embed_tokens.weight").to(dtype)
        down = f.get_tensor("model.layers.3.mlp.down_proj.weight").to(dtype)
    assert torch.equal(model.model.embed_tokens.weight, want)
    assert torch.equal(model.model.layers[3].mlp.down_proj.weight, down)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "cpu" and t.dtype == dtype for t in tensors if t.is_floating_point())
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert nn.init.normal_ is loader._ORIGINAL["normal_"]

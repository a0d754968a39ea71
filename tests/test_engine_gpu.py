"""The constraint engine gives the same answers on CUDA as on CPU."""

from __future__ import annotations

import pytest
import torch

from atmc_plugin.engine.codebook import codebook_quantize
from atmc_plugin.engine.intgrid import GridSpec, int_grid_quantize
from atmc_plugin.engine.sparsity import global_topk_masks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(64, 32, 3, 3, generator=g), torch.randn(10, 512, generator=g)]


def test_topk_same_on_cuda() -> None:
    cpu = _tensors()
    masks_cpu, thr_cpu = global_topk_masks(cpu, 3000)
    masks_gpu, thr_gpu = global_topk_masks([t.cuda() for t in cpu], 3000)
    assert thr_cpu == thr_gpu
    assert all(torch.equal(a, b.cpu()) for a, b in zip(masks_cpu, masks_gpu, strict=True))


def test_codebook_close_on_cuda() -> None:
    x = _tensors()[0]
    q_cpu, _ = codebook_quantize(x, 4)
    q_gpu, _ = codebook_quantize(x.cuda(), 4)
    assert q_gpu.device.type == "cuda"
    err_cpu = float(((q_cpu - x) ** 2).sum())
    err_gpu = float(((q_gpu.cpu() - x) ** 2).sum())
    assert err_gpu == pytest.approx(err_cpu, rel=1e-4)
    assert torch.unique(q_gpu[q_gpu != 0]).numel() <= 16


def test_int_grid_same_on_cuda() -> None:
    x = _tensors()[1]
    spec = GridSpec(bits=4, granularity="group", group_size=32)
    assert torch.allclose(int_grid_quantize(x, spec)[0], int_grid_quantize(x.cuda(), spec)[0].cpu())


def test_resume_an_int_grid_state_on_cuda(tmp_path) -> None:
    """A checkpoint read onto the CPU resumes a CUDA fine-tune (grid states follow the model)."""
    from torch.nn import functional as F

    from atmc_plugin import ATMC, ATMCConfig, ConstraintConfig
    from tests.conftest import TinyCNN

    cfg = ATMCConfig(
        constraint=ConstraintConfig(
            density=0.5, bits=4, quantizer="int", granularity="group", group_size=4
        )
    )
    model = TinyCNN()
    atmc = ATMC(model, cfg)
    atmc.finalize()
    torch.save(atmc.state_dict(), tmp_path / "atmc.pt")
    twin = TinyCNN().cuda()
    twin.load_state_dict(model.state_dict())
    resumed = ATMC(twin, cfg)
    resumed.load_state_dict(torch.load(tmp_path / "atmc.pt", weights_only=True, map_location="cpu"))
    opt = torch.optim.SGD(twin.parameters(), lr=0.01)
    resumed.attach(opt)
    x, y = torch.rand(8, 1, 8, 8, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    F.cross_entropy(twin(x), y).backward()
    opt.step()  # projections onto the frozen grid run on CUDA
    assert resumed.step_count == 1

"""Device readiness (issue 13, target 7): the reference path, which runs every call off the CPU,
makes no host-device synchronisation. On a CUDA device under
``torch.cuda.set_sync_debug_mode("error")`` (skipped where there is none), and everywhere on the
``meta`` device, where a read of a tensor's value on the host (``.item()``, ``bool()``,
``float()``, ``nonzero``) or a copy from the host fails the test."""
from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from efusion import backends, blend, exposure_fusion

#: the calls each test makes: (keyword arguments, what they exercise)
CALLS = [
    ({}, "defaults"),
    ({"levels": 2.5, "preset": "opencv"}, "fractional depth, OpenCV conventions"),
    ({"contrast": 40.0}, "weights that overflow: the log-domain path is computed too"),
]


def _tensor_calls(device: str) -> list[dict]:
    """Calls whose parameters are tensors on the device (learned parameters), and a mask."""
    return [
        {"contrast": torch.tensor(1.0, device=device), "mu": torch.full((3,), 0.5, device=device),
         "sigma": torch.tensor(0.2, device=device), "levels": torch.tensor(3.5, device=device)},
        {"mask": (torch.arange(5 * 6, device=device).reshape(1, 1, 1, 5, 6) % 4 != 0).to(torch.float32)
                 .expand(1, 3, 1, 5, 6).repeat(1, 1, 1, 4, 4)},
    ]


class _HostReads(TorchDispatchMode):
    """Fails on the operators that would make a GPU wait: values read on the host, host-to-device copies."""

    READS: ClassVar[set] = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                           torch.ops.aten.is_nonzero.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS and args[0].device.type != "cpu":  # host constants (float32 roundings) cost nothing
            raise AssertionError(f"a host read of a device tensor: {func}")
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0].device if func is torch.ops.aten.copy_.default else torch.device(kwargs.get("device") or source.device)
            if isinstance(source, torch.Tensor) and source.device.type == "cpu" and target.type != "cpu":
                raise AssertionError(f"a host-to-device copy: {func} of {tuple(source.shape)}")
        return func(*args, **kwargs)


class TestMetaDevice:
    """The reference path off the CPU, shapes only: no value is read on the host."""

    @pytest.mark.parametrize("kwargs", [c for c, _ in CALLS] + _tensor_calls("meta"),
                             ids=[name for _, name in CALLS] + ["tensor parameters", "mask"])
    def test_exposure_fusion_reads_nothing_on_the_host(self, kwargs):
        stack = torch.empty(1, 3, 3, 20, 24, device="meta")
        with backends.use("reference"), _HostReads():
            out = exposure_fusion(stack, **kwargs)
        assert out.shape == (1, 3, 20, 24) and out.device.type == "meta"

    def test_blend_and_gradients_read_nothing_on_the_host(self):
        stack = torch.empty(2, 3, 3, 20, 24, device="meta", requires_grad=True)
        weights = torch.empty(2, 3, 1, 20, 24, device="meta", requires_grad=True)
        levels = torch.tensor(2.5, device="meta", requires_grad=True)
        with backends.use("reference"), _HostReads():
            out = blend(stack, weights, levels=levels) + exposure_fusion(stack)
            out.sum().backward()
        assert stack.grad is not None and weights.grad is not None and levels.grad is not None

    def test_the_guard_fails_on_a_host_read(self):
        # the check above can fail: float() of a device value is a host read
        with pytest.raises(AssertionError, match="host read"), _HostReads():
            float(torch.empty((), device="meta").sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
class TestCuda:
    """The reference path on a GPU: no synchronisation, the CPU reference's values."""

    @pytest.fixture(autouse=True)
    def _sync_errors(self):
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    @pytest.mark.parametrize("index", range(len(CALLS) + 2))
    def test_exposure_fusion_does_not_synchronise(self, index):
        kwargs = (CALLS[index][0] if index < len(CALLS) else _tensor_calls("cuda")[index - len(CALLS)])
        host = torch.rand(1, 3, 3, 20, 24, generator=torch.Generator().manual_seed(index))
        torch.cuda.set_sync_debug_mode("default")
        stack = host.cuda()  # (the transfer itself is the caller's)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        with backends.use("reference"):
            out = exposure_fusion(stack, **kwargs)
        torch.cuda.set_sync_debug_mode("default")
        on_cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with backends.use("reference"):
            expected = exposure_fusion(host, **on_cpu)
        torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)

    def test_forward_backward_does_not_synchronise(self):
        stack = torch.rand(2, 3, 3, 20, 24, device="cuda", requires_grad=True)
        contrast = torch.tensor(1.0, device="cuda", requires_grad=True)
        with backends.use("reference"):
            exposure_fusion(stack, contrast=contrast, levels=3).sum().backward()
        assert stack.grad is not None and contrast.grad is not None

"""The engine's Triton decode-attention kernel against SDPA.

The kernel runs here on CPU through Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported, hence the subprocess). Skipped when triton is not installed (CPU-only torch builds ship
without it); `python -m grpo.bench --engine-only` checks the compiled kernel on a GPU in bf16.
"""
import pytest
from interp_utils import run_interpreted

pytest.importorskip("triton")

SCRIPT = r"""
import torch
from grpo.engine.decode_attention import _sdpa, triton_decode_attention
torch.manual_seed(0)
worst = {}
for dtype in (torch.float32, torch.float16):  # the interpreter mishandles bf16 dot; the GPU check covers it
    for length, block_n in ((64, 64), (100, 64), (37, 16), (192, 64)):
        n, h, r, d, slots = 5, 3, 3, 64, 256
        q = torch.randn(n, h, r, d, dtype=dtype)
        k = torch.randn(n, h, slots, d, dtype=dtype)
        v = torch.randn(n, h, slots, d, dtype=dtype)
        mask = torch.full((n, slots), float("-inf"), dtype=dtype)
        for i in range(n):
            mask[i, 7 * i: length] = 0.0          # row i: 7*i slots of left padding
        mask[4, 0:20] = float("-inf")             # a whole first block masked (block_n 16)
        ref = _sdpa(q.float(), k[:, :, :length].float(), v[:, :, :length].float(), mask[:, :length].float(), 0.125)
        out = triton_decode_attention(q, k[:, :, :length], v[:, :, :length], mask[:, :length], 0.125, block_n)
        assert out.dtype == dtype and out.shape == q.shape
        worst[str(dtype)] = max(worst.get(str(dtype), 0.0), float((out.float() - ref).abs().max()))
assert worst["torch.float32"] < 1e-5, worst
assert worst["torch.float16"] < 2e-3, worst
print("ok", worst)
"""


def test_triton_decode_kernel_matches_sdpa_under_interpreter():
    assert run_interpreted(SCRIPT).startswith("ok")

"""core.full_precision inside programs that set float32 precision themselves, through either of PyTorch's
APIs. Each case runs in its own process: these switches are process-wide, and once a program has mixed
the two APIs, reading the legacy flags raises."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

HOST_SETTINGS = {
    "fp32_precision API": "b.cuda.matmul.fp32_precision = 'tf32'; b.cudnn.conv.fp32_precision = 'tf32'; "
                          "b.mkldnn.matmul.fp32_precision = 'bf16'",
    "legacy allow_tf32 flags": "b.cuda.matmul.allow_tf32 = True; b.cudnn.allow_tf32 = True",
    "defaults": "",
}

CHILD = """
import json, torch
import core
b = torch.backends
{host}
state = lambda: [getattr(owner, name) for owner, name, _, _ in core.fp32_switches()]
reduced = lambda: [core.reduced_precision(*switch) for switch in core.fp32_switches()]
cpu = torch.device("cpu")
before, reduced_before = state(), reduced()
torch.manual_seed(0)
D, G = core.D1(), core.G1(k=4, channels=1)
x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
with torch.autocast("cpu", dtype=torch.bfloat16):
    with core.full_precision(cpu):
        inside = reduced()
        dtype = str(D(x).dtype)
    grads = core.discriminator_grads(D, G, x, x, y, 0.3)[0]  # the C step's regulariser enters full_precision
print(json.dumps({{"before": before, "reduced_before": reduced_before, "inside": inside, "after": state(),
                  "dtype": dtype, "finite": all(bool(torch.isfinite(g).all()) for g in grads)}}))
"""


@pytest.mark.parametrize("host", HOST_SETTINGS)
def test_full_precision_works_and_restores_whatever_api_the_program_used(host):
    if host == "fp32_precision API" and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no fp32_precision API (core.fp32_switches uses allow_tf32)")
    out = subprocess.run([sys.executable, "-c", CHILD.format(host=HOST_SETTINGS[host])], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any(seen["inside"]), "float32 must be IEEE inside the block"
    assert seen["after"] == seen["before"], "every switch must get back exactly what the program had set"
    assert seen["dtype"] == "torch.float32" and seen["finite"]
    assert any(seen["reduced_before"]), "TF32 or bf16 must be on before (cuDNN's default TF32 at least)"
    if host == "fp32_precision API":
        assert sum(seen["reduced_before"]) >= 3, seen["reduced_before"]

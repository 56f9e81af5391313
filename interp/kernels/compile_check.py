"""Compile the flash-attention kernels for a GPU target without a GPU, and report what the compiler made.

    python -m interp.kernels.compile_check            # every dtype x head dim x causal x kernel, sm_90
    python -m interp.kernels.compile_check --quick    # one of each kernel, plain and with every score mod

Triton can lower a kernel all the way to a cubin on a machine with no GPU (it ships ptxas). That catches what
the CPU interpreter cannot: type errors of the compiled language (a runtime ``if`` whose branches give a
variable different types, a dot on unsupported shapes), shared memory over the per-block limit, register
spills. For each variant it prints the shared memory, the registers per thread and local-memory bytes
(spills; from ``cuobjdump -res-usage``), and which tensor-core instruction the PTX uses (``wgmma`` is Hopper's warpgroup MMA; a
kernel on ``mma.sync`` only would be on the slower pre-Hopper path).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Compiled:
    kernel: str
    dtype: str
    head_dim: int
    causal: bool
    mods: bool
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    seconds: float
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None
    mma: str
    error: str | None = None


def _cuobjdump() -> str | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else None


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers per thread, local-memory bytes per thread: spills and stack) from ``cuobjdump -res-usage``."""
    tool = _cuobjdump()
    if tool is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=False)
    regs = re.search(r"REG:(\d+)", res.stdout)
    local = re.search(r"LOCAL:(\d+)", res.stdout)
    stack = re.search(r"STACK:(\d+)", res.stdout)
    spill = None if local is None else int(local.group(1)) + (int(stack.group(1)) if stack else 0)
    return (int(regs.group(1)) if regs else None), spill


def compile_one(kernel: str, dtype: str, head_dim: int, causal: bool, block_m: int, block_n: int,
                num_warps: int, num_stages: int, capability: int = 90, mods: bool = False) -> Compiled:
    """Lower one kernel variant to a cubin for compute capability ``capability`` (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from interp.kernels import _triton_flash as K

    fn = {"fwd": K._attn_fwd, "dkdv": K._attn_bwd_dkdv, "dq": K._attn_bwd_dq}[kernel]
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    # mods: soft-cap, ALiBi and a sliding window all on (the window only with causal, as the API requires)
    consts = {"HEAD_DIM": head_dim, "BLOCK_D": block_d, "CAUSAL": causal, "IEEE": dtype == "fp32",
              "UPCAST": False, "SOFTCAP": mods, "HAS_ALIBI": mods, "HAS_WINDOW": mods and causal,
              "BLOCK_M": block_m, "BLOCK_N": block_n}
    pointers = {name: f"*{dtype}" for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    pointers.update({"LSE": "*fp32", "DELTA": "*fp32", "ALIBI": "*fp32"})
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name in ("qk_scale", "sm_scale", "softcap"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    t = time.time()
    row = {"kernel": kernel, "dtype": dtype, "head_dim": head_dim, "causal": causal, "mods": mods, "block_m": block_m,
           "block_n": block_n, "num_warps": num_warps, "num_stages": num_stages}
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as e:  # noqa: BLE001 - report any compiler failure as a row
        return Compiled(**row, seconds=time.time() - t, shared_bytes=0, registers=None, spill_bytes=None,
                        mma="-", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "none")
    regs, spills = _resource_usage(compiled.asm["cubin"])
    return Compiled(**row, seconds=time.time() - t, shared_bytes=compiled.metadata.shared, registers=regs,
                    spill_bytes=spills, mma=mma)


def _tiles(configs) -> list[tuple[int, int, int, int]]:
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in configs]


def main(argv=None) -> int:
    from interp.kernels import _triton_flash as K

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="bf16, d=128, causal, first config of each kernel")
    parser.add_argument("--all-configs", action="store_true",
                        help="every autotune candidate (bf16, causal, d 64 and 128) instead of the first")
    parser.add_argument("--capability", type=int, default=90)
    args = parser.parse_args(argv)
    lists = {"fwd": _tiles(K.FWD_CONFIGS), "dkdv": _tiles(K.DKDV_CONFIGS), "dq": _tiles(K.DQ_CONFIGS)}
    if args.all_configs:
        dtypes, dims, causals, modss = ["bf16"], [64, 128], [True], [False]
    elif args.quick:
        dtypes, dims, causals, modss = ["bf16"], [128], [True], [False, True]
    else:
        dtypes, dims, causals, modss = ["bf16", "fp16", "fp32"], [64, 128, 80], [True, False], [False, True]
    failed = 0
    header = f"{'kernel':<7}{'dtype':<6}{'d':>4} {'causal':<7}{'mods':<6}{'tile':>14}{'smem KB':>9}{'regs':>6}"
    print(header + f"{'local B':>8}  {'mma':<9}{'s':>5}")
    for dtype in dtypes:
        for d in dims:
            for causal in causals:
                for mods in modss:
                    for kernel, tiles in lists.items():
                        for bm, bn, w, st in tiles if args.all_configs else tiles[:1]:
                            r = compile_one(kernel, dtype, d, causal, bm, bn, w, st, args.capability, mods)
                            tile = f"{bm}x{bn}/w{w}s{st}"
                            what = f"{kernel:<7}{dtype:<6}{d:>4} {causal!s:<7}{mods!s:<6}{tile:>14}"
                            if r.error:
                                failed += 1
                                print(f"{what}  FAILED {r.error}")
                                continue
                            regs = "?" if r.registers is None else r.registers
                            local = "?" if r.spill_bytes is None else r.spill_bytes
                            print(f"{what}{r.shared_bytes / 1024:>9.1f}{regs:>6}{local:>8}  {r.mma:<9}"
                                  f"{r.seconds:>5.1f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Ahead-of-time compile check: every slimgraph kernel x config for Hopper (sm_90a) and Ampere (sm_80), on a CPU.

    python -m bench.aot [--fast] [--arch 90,80] [--only int8_matmul,w8a16_matmul] [--jobs 2] [--out bench/results]
    (default: a scratch directory)

No GPU is needed: Triton's front end, LLVM and the ptxas bundled in the triton wheel produce PTX and a cubin for a
``GPUTarget("cuda", 90, 32)`` (Triton compiles capability 90 as ``sm_90a``, the arch with wgmma and TMA) or 80.
What gets compiled is what the project's host code would launch: each case calls a kernel's own launcher on empty
CPU tensors inside :func:`slimgraph.kernels.launch.recording_launches`, so buckets, split-K, EVEN_K and the
other constexprs come from the launchers, one record per candidate config. Each record is bound by Triton's JIT
binder (the same specialization a GPU launch does: ints equal to 1 become constexprs, 16-divisible pointers and
ints get divisibility hints) and compiled.

Per (case, config, arch) the table shows registers per thread, spill stores/loads (ptxas -v), shared memory and
whether it passes the per-block limit, CTAs per SM (from registers, shared memory and threads), the MMA
instruction and, for wgmma, whether any ``wgmma.wait_group`` leaves MMAs in flight (depth > 0), the global->shared
load path (TMA / cp.async / ld.global), and the 32-bit multiplies that feed a pointer offset (from the TTIR: an
``arith.muli`` on i32 of run-time values reachable from a ``tt.addptr`` offset without an int64 extension: such an
offset wraps once M*K or M*N reaches 2**31).

Exit status 1 when any compile fails, any selectable config spills or overflows shared memory on any target, or
any i32 offset multiply remains. ``--fast`` compiles the default config of each kernel for sm_90a only (CI).
Results: ``<out>/aot-sm90a-sm80.{json,md,png}`` (``--fast``: ``aot-fast.*``) with the harness's run metadata
(command, commit, triton and torch versions; JSON key ``environment``); :func:`plot` draws the PNG again from a JSON.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "aot"
KERNELS = ("int8_matmul", "w8a16_matmul", "block_sparse", "int8_conv", "quantize")


@dataclass(frozen=True)
class Arch:
    capability: int
    name: str
    smem_per_block: int  # opt-in dynamic shared memory a CTA may use
    smem_per_sm: int
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048
    ctas_per_sm: int = 32

    @property
    def label(self) -> str:
        return f"sm_{self.capability}a" if self.capability >= 90 else f"sm_{self.capability}"


ARCHS = {
    90: Arch(90, "H100/H200", smem_per_block=227 * 1024, smem_per_sm=228 * 1024),
    80: Arch(80, "A100", smem_per_block=163 * 1024, smem_per_sm=164 * 1024),
}


# ------------------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    kernel: str  # one of KERNELS
    name: str
    run: object  # () -> None: calls the launcher (inside recording_launches)
    fast: bool = False  # the --fast subset: one case per kernel, compiled with its bucket's default config
    targets: tuple[int, ...] = (90, 80)


def cases() -> list[Case]:
    """The launches to compile: each bucket of each kernel with its heaviest epilogue, plus the other code paths
    (K tails, split-K, int8 / float block-sparse, every BSR block shape, norm variants)."""
    import torch

    from slimgraph.kernels.block_sparse import BlockSparseWeight, block_sparse_matmul_kernel
    from slimgraph.kernels.epilogue import ACTIVATION_CODES
    from slimgraph.kernels.int8_conv import int8_conv2d_kernel
    from slimgraph.kernels.int8_matmul import int8_matmul_kernel
    from slimgraph.kernels.int8_matmul_wgmma import launch_wgmma
    from slimgraph.kernels.quantize import norm_quantize_kernel
    from slimgraph.kernels.w8a16_matmul import w8a16_matmul_kernel

    e, i8, f16, bf16, f32 = torch.empty, torch.int8, torch.float16, torch.bfloat16, torch.float32
    out: list[Case] = []

    def i8mm(M, K, bias, act, dt):
        return lambda: int8_matmul_kernel(e(M, K, dtype=i8), e(4096, K, dtype=i8), e(M, dtype=f32), e(4096, dtype=f32),
                                          e(4096, dtype=f16) if bias else None, act, dt)  # fmt: skip

    for M in (16, 64, 256, 4096):
        out.append(Case("int8_matmul", f"M={M} N=K=4096 +bias gelu ->bf16", i8mm(M, 4096, True, "gelu", bf16),
                        fast=M == 4096))  # fmt: skip
    out.append(Case("int8_matmul", "M=4096 N=4096 K=11008 (K tail) ->fp16", i8mm(4096, 11008, False, None, f16)))
    # The Hopper main loop with wgmma in flight (what int8_matmul runs on sm_90 above the decode buckets).
    for M, bucket in ((256, "m256"), (4096, "large")):
        def wg(M=M, bucket=bucket):
            launch_wgmma(e(M, 4096, dtype=i8), e(4096, 4096, dtype=i8), e(M, dtype=f32), e(4096, dtype=f32),
                         e(4096, dtype=f16), ACTIVATION_CODES["gelu"], e(M, 4096, dtype=bf16), bucket)

        out.append(Case("int8_matmul", f"M={M} N=K=4096 +bias gelu ->bf16, Gluon wgmma", wg, fast=M == 4096,
                        targets=(90,)))  # fmt: skip
    out.append(Case("int8_matmul", "M=1 N=4096 K=11008 (K tail, split-K) ->fp16", i8mm(1, 11008, False, None, f16)))

    def w8(M, K, dt, split=None):
        return lambda: w8a16_matmul_kernel(e(M, K, dtype=dt), e(4096, K, dtype=i8), e(4096, dtype=f32),
                                           e(4096, dtype=dt), split_k=split)  # fmt: skip

    for M in (1, 16, 64, 256, 4096):  # M = 1 is the GEMV kernel
        out.append(Case("w8a16_matmul", f"M={M} N=K=4096 x bf16 +bias", w8(M, 4096, bf16), fast=M in (1, 16)))
    out.append(Case("w8a16_matmul", "M=16 N=4096 K=11008 x fp16 (K tail, split-K 2)", w8(16, 11008, f16, 2)))

    def bsr(M, block, vdt, xdt, act=None):
        bn, bk = block
        rows, cols = 4096 // bn, 4096 // bk
        nnz = rows * cols // 2

        def go():
            w = BlockSparseWeight(e(nnz, bn, bk, dtype=vdt), torch.zeros(nnz, dtype=torch.int32),
                                  torch.zeros(rows + 1, dtype=torch.int32), (4096, 4096), block,
                                  e(4096, dtype=f32) if vdt == i8 else None)  # fmt: skip
            xs = e(M, dtype=f32) if xdt == i8 else None
            block_sparse_matmul_kernel(e(M, 4096, dtype=xdt), w, e(4096, dtype=f16), x_scale=xs, activation=act)

        return go

    for M in (16, 64, 256, 4096):
        for block in ((64, 64), (128, 64), (128, 128)) + (((32, 32),) if M == 16 else ()):
            out.append(Case("block_sparse", f"M={M} 4096^2 50% block {block[0]}x{block[1]} fp16 +bias",
                            bsr(M, block, f16, f16), fast=M == 4096 and block == (64, 64)))  # fmt: skip
        out.append(Case("block_sparse", f"M={M} 4096^2 50% block 64x64 int8 x int8 +bias gelu ->fp16",
                        bsr(M, (64, 64), i8, i8, "gelu")))  # fmt: skip

    def conv(B, HW, C, OC, k, stride, pad, dt):
        x, w = e(B, HW, HW, C, dtype=i8), e(OC, k, k, C, dtype=i8)
        return lambda: int8_conv2d_kernel(x, w, e(1, dtype=f32), e(OC, dtype=f32), e(OC, dtype=f32), stride, pad, 1,
                                          1, "relu", dt)  # fmt: skip

    for B, HW in ((1, 4), (1, 8), (1, 16), (32, 14)):
        out.append(Case("int8_conv", f"{B}x{HW}x{HW}x256 3x3 OC=256 (M={B * HW * HW}) +bias relu ->bf16",
                        conv(B, HW, 256, 256, 3, 1, 1, bf16), fast=B == 32))  # fmt: skip
    out.append(Case("int8_conv", "32x224x224x3 7x7/2 OC=64 stem +bias relu ->fp16", conv(32, 224, 3, 64, 7, 2, 3, f16)))

    for K in (768, 4096, 32768):
        for norm in ("layernorm",) if K != 4096 else ("none", "layernorm", "rmsnorm"):
            wt = norm != "none"

            def q(K=K, norm=norm, wt=wt):
                norm_quantize_kernel(e(4, K, dtype=f16), e(K, dtype=f16) if wt else None,
                                     e(K, dtype=f16) if norm == "layernorm" else None, 1e-5, norm=norm)  # fmt: skip

            out.append(Case("quantize", f"K={K} fp16 {norm}", q, fast=K == 4096 and norm == "layernorm"))
    return out


# -------------------------------------------------------------------------------------------------- recording


@dataclass
class Job:
    """One compile: picklable (kernels by module + name, tensors as dtypes) so worker processes can run it."""

    kernel: str
    case: str
    bucket: str
    module: str
    function: str
    args: list
    constexprs: dict
    config: dict
    default: bool  # the bucket's first config (the one used with SLIMGRAPH_AUTOTUNE=0)
    arch: int = 90
    extra: dict = field(default_factory=dict)


def _picklable(arg, mock):
    """Tensors become dtype-only mocks (the binder reads dtype and a 16-aligned data_ptr); so do the bases of TMA
    descriptors, which keep their shape, strides, block shape and layout."""
    import dataclasses

    import torch

    if isinstance(arg, torch.Tensor):
        return mock(arg.dtype)
    if dataclasses.is_dataclass(arg) and isinstance(getattr(arg, "base", None), torch.Tensor):
        return dataclasses.replace(arg, base=mock(arg.base.dtype))
    return arg


def record_jobs(selected: list[Case], fast: bool) -> list[Job]:
    from triton.runtime.jit import MockTensor

    from slimgraph.kernels.dispatch import AUTOTUNE_ENV
    from slimgraph.kernels.launch import recording_launches

    os.environ[AUTOTUNE_ENV] = "0" if fast else "1"  # "0": candidate_configs returns the bucket default only
    jobs = []
    for case in selected:
        with recording_launches() as records:
            try:
                case.run()
            except Exception as err:  # noqa: BLE001 - e.g. no Gluon in this triton: a failing row, not a crash
                jobs.append(Job(case.kernel, case.name, "-", "-", "-", [], {}, {"num_warps": 0, "num_stages": 0},
                                False, 90, {"error": f"launcher raised {type(err).__name__}: {err}"}))  # fmt: skip
                continue
        if not records:
            raise RuntimeError(f"case {case.kernel} / {case.name!r} launched no kernel")
        first = {}
        for rec in records:
            fn = rec.kernel.fn
            first.setdefault((fn.__name__, rec.bucket), rec.config)
            args = [_picklable(a, MockTensor) for a in rec.args]
            for arch in case.targets if not fast else (90,):
                jobs.append(Job(case.kernel, case.name, rec.bucket, fn.__module__, fn.__name__, args,
                                dict(rec.constexprs), rec.config.all_kwargs(),
                                first[(fn.__name__, rec.bucket)] is rec.config, arch))  # fmt: skip
    return jobs


# ---------------------------------------------------------------------------------------------------- compile

_SSA = re.compile(r"%[\w.$-]+")


def i32_offset_multiplies(ttir: str) -> list[str]:
    """The i32 multiplies of two run-time values (index x stride, index x dimension) that reach a pointer offset
    without an int64 extension: the products that wrap once a tensor passes 2**31 elements.

    Walks the TTIR def-use chains backwards from every ``tt.addptr`` offset. A product with a compile-time factor
    (a constant such as BLOCK_M, or ``tt.make_range``) is a tile index within one dimension and not reported;
    loop-carried values are followed through ``iter_args`` to their initial values."""
    defs: dict[str, tuple[str, list[str], str]] = {}  # name -> (op, operands, result type)
    addptr_offsets: list[str] = []
    for raw in ttir.splitlines():
        line = re.sub(r"\s*loc\(.*\)\s*$", "", raw.strip())
        for block_arg, init in re.findall(r"(%[\w.$-]+) = (%[\w.$-]+)", line.split("iter_args", 1)[1]) \
                if "iter_args(" in line else ():  # fmt: skip
            defs[block_arg] = ("iter_arg", [init], "")
        m = re.match(r"(%[\w.$-]+)(?::\d+)? = ([\w.]+) (.*)$", line)
        if not m:
            continue
        name, op, rest = m.groups()
        operands_text, _, type_text = rest.partition(" : ")
        operands = [o.split("#")[0] for o in _SSA.findall(operands_text)]
        defs[name] = (op, operands, type_text)
        if op == "tt.addptr" and len(operands) >= 2:
            addptr_offsets.append(operands[1])

    compile_time_cache: dict[str, bool] = {}

    def compile_time(v: str, depth: int = 0) -> bool:
        if v in compile_time_cache:
            return compile_time_cache[v]
        op, operands, _ = defs.get(v, ("arg", [], ""))
        if op in ("arith.constant", "tt.make_range"):
            result = True
        elif op in ("arg", "iter_arg", "tt.get_program_id", "tt.load", "scf.for") or depth > 200:
            result = False
        else:
            result = all(compile_time(o, depth + 1) for o in operands)
        compile_time_cache[v] = result
        return result

    found, seen = [], set()
    stack = list(addptr_offsets)
    while stack:
        v = stack.pop()
        if v in seen or v not in defs:
            continue
        seen.add(v)
        op, operands, type_text = defs[v]
        if op in ("arith.extsi", "arith.extui"):  # widened to int64: what is upstream is an index, not an offset
            continue
        if op == "arith.muli" and re.search(r"\bi32\b|xi32>", type_text) and not any(map(compile_time, operands)):
            found.append(v)
        stack.extend(operands)
    return sorted(found)


def _mma_kind(ptx: str, ttir: str) -> tuple[str, bool | None, list[int]]:
    wgmma = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)\.(\w+)\.(\w+)", ptx)))
    if wgmma:
        waits = sorted({int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)})
        shapes = ",".join(f"{s}.{d}.{a}" for s, d, a in wgmma)
        return f"wgmma {shapes}", any(waits), waits
    mma = sorted(set(re.findall(r"mma\.sync\.aligned\.(m\d+n\d+k\d+)\.row\.col(?:\.satfinite)?\.(\w+)\.(\w+)", ptx)))
    if mma:
        return "mma.sync " + ",".join(f"{s}.{d}.{a}" for s, d, a in mma), None, []
    return ("FMA (no tensor core)" if "tt.dot" in ttir else "-"), None, []


def _load_path(ptx: str) -> str:
    if "cp.async.bulk.tensor" in ptx:
        return "TMA"
    if re.search(r"cp\.async\.c[ag]", ptx):
        return "cp.async"
    return "ld.global"


def ctas_per_sm(arch: Arch, regs: int, warps: int, shared: int) -> int:
    """Occupancy bound: registers are allocated per warp in units of 256, shared memory per CTA plus 1 KiB the
    driver reserves."""
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = arch.regs_per_sm // max(1, regs_per_warp * warps)
    by_smem = arch.smem_per_sm // (shared + 1024) if shared else arch.ctas_per_sm
    return min(by_regs, by_smem, arch.threads_per_sm // (32 * warps), arch.ctas_per_sm)


def config_label(job: Job) -> str:
    c = {**job.constexprs, **job.config}
    if "BLOCK_N" in c:
        tile = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in c)
    elif "BLOCK_M" in c:
        tile = f"BM={c['BLOCK_M']} blk={c.get('BN')}x{c.get('BK')}"
    else:
        tile = f"BLOCK={c.get('BLOCK_K', c.get('BLOCK'))}"
    flags = "".join(f" {k}" for k in ("EVEN_K", "EVEN_C") if c.get(k))
    split = c.get("SPLIT_K", 1)
    return f"{tile} w{c['num_warps']} s{c['num_stages']}" + (f" split{split}" if split > 1 else "") + flags


def compile_job(job: Job) -> dict:
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    arch = ARCHS[job.arch]
    if "error" in job.extra:
        return dict(kernel=job.kernel, case=job.case, bucket=job.bucket, function=job.function, config="-",
                    default=False, arch=arch.label, ok=False, error=job.extra["error"])  # fmt: skip
    row = dict(kernel=job.kernel, case=job.case, bucket=job.bucket, function=job.function, config=config_label(job),
               default=job.default, arch=arch.label)  # fmt: skip
    kernel = getattr(importlib.import_module(job.module), job.function)
    target = GPUTarget("cuda", job.arch, 32)
    backend = make_backend(target)
    kwargs = {**job.constexprs, **job.config}
    # What JITFunction.run adds before it binds the arguments.
    kwargs["debug"] = kernel.debug or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v goes to stdout: captured below
    knobs.compilation.always_compile = True
    log = io.StringIO()
    started = time.perf_counter()
    try:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, spec, opts = binder(*job.args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
        if getattr(kernel, "is_gluon", lambda: False)():
            from triton.experimental.gluon._runtime import GluonASTSource as source
        else:
            from triton.compiler import ASTSource as source
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source(kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - a compiler error is a row of the table, and fails the check
        row.update(ok=False, error=f"{type(err).__name__}: {str(err)[-1500:]}", seconds=time.perf_counter() - started)
        return row
    text, ptx = log.getvalue(), compiled.asm["ptx"]
    ttir = compiled.asm.get("ttir") or compiled.asm.get("ttgir", "")
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    regs_n = int(regs.group(1)) if regs else 0
    shared = int(compiled.metadata.shared)
    mma, in_flight, waits = _mma_kind(ptx, ttir)
    row.update(
        ok=True, regs=regs_n, stack=int(spill.group(1)) if spill else 0,
        spill_stores=int(spill.group(2)) if spill else 0, spill_loads=int(spill.group(3)) if spill else 0,
        shared=shared, smem_limit=arch.smem_per_block, over_smem=shared > arch.smem_per_block,
        ctas_per_sm=ctas_per_sm(arch, regs_n, job.config["num_warps"], shared), mma=mma, mma_in_flight=in_flight,
        wgmma_wait_depths=waits, loads=_load_path(ptx), i32_offset_muls=i32_offset_multiplies(ttir),
        seconds=round(time.perf_counter() - started, 2),
    )  # fmt: skip
    return row


def problems(row: dict) -> list[str]:
    """Why a row fails the check (every recorded config is selectable: autotuning may pick any of them)."""
    if not row["ok"]:
        return [f"compile error: {row['error'][:200]}"]
    found = []
    if row["spill_stores"] or row["spill_loads"]:
        found.append(f"spills {row['spill_stores']}/{row['spill_loads']} B")
    if row["over_smem"]:
        found.append(f"shared memory {row['shared']} B > {row['smem_limit']} B")
    if row["i32_offset_muls"]:
        found.append(f"i32 offset multiplies {', '.join(row['i32_offset_muls'])}")
    return found


def compile_all(jobs: list[Job], workers: int) -> list[dict]:
    """Compile in ``workers`` processes, printing each result as it comes (a shared CPU can make this slow)."""
    rows: list[dict | None] = [None] * len(jobs)
    started = time.perf_counter()

    def done(i: int, row: dict) -> None:
        rows[i] = row
        issues = problems(row)
        print(f"  [{sum(r is not None for r in rows)}/{len(jobs)} {time.perf_counter() - started:.0f}s] "
              f"{row['kernel']} {row['config']} {row['arch']}: {'; '.join(issues) or 'ok'}", flush=True)

    if workers <= 1:
        for i, job in enumerate(jobs):
            done(i, compile_job(job))
        return rows
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(compile_job, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            job = jobs[futures[future]]
            try:
                row = future.result()
            except Exception as err:  # noqa: BLE001 - a crashed worker (e.g. ptxas killed) is a failing row
                row = dict(kernel=job.kernel, case=job.case, bucket=job.bucket, function=job.function, config="?",
                           default=job.default, arch=ARCHS[job.arch].label, ok=False,
                           error=f"{type(err).__name__}: {err}")  # fmt: skip
            done(futures[future], row)
    return rows


# ---------------------------------------------------------------------------------------------------- report


def kernels_dirty() -> bool:
    """Uncommitted changes to what is compiled here (others may have uncommitted work elsewhere in the tree)."""
    status = subprocess.run(["git", "status", "--porcelain", "--", "slimgraph/kernels", "bench/aot.py"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return bool(status)


def render(rows: list[dict], meta: dict) -> list[str]:
    from bench.harness import meta_lines

    lines = [
        "# Ahead-of-time compile check (sm_90a / sm_80)",
        "",
        *meta_lines(meta),
        "- compiled code: " + ("uncommitted changes to slimgraph/kernels or bench/aot.py" if meta["kernels_dirty"]
                               else "slimgraph/kernels and bench/aot.py as committed") + f"; {meta['host']}",
        "",
        "Every config is selectable (autotuning may pick it); `default` marks the bucket's first config (used with "
        "SLIMGRAPH_AUTOTUNE=0). `in flight` = a `wgmma.wait_group` with depth > 0 (MMAs overlap the next K step). "
        "`i32 mul` = 32-bit multiplies feeding a pointer offset (TTIR names). CTAs/SM from registers, shared memory "
        "and threads.",
        "",
    ]
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        group = [r for r in rows if r["kernel"] == kernel]
        bad = sum(1 for r in group if problems(r))
        lines += [f"## {kernel}: {len(group)} compiles, {bad} failing the check", "",
                  "| case | bucket | function | config | default | arch | regs | spill st/ld B | smem B | CTAs/SM "
                  "| mma | in flight | loads | i32 mul | check |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in group:
            issues = problems(r)
            if not r["ok"]:
                lines.append(f"| {r['case']} | {r['bucket']} | {r['function']} | {r['config']} | "
                             f"{'yes' if r['default'] else ''} | {r['arch']} | | | | | | | | | FAIL: {issues[0]} |")
                continue
            flight = {True: "yes", False: "no (wait 0)", None: "—"}[r["mma_in_flight"]]
            lines.append(
                f"| {r['case']} | {r['bucket']} | {r['function']} | {r['config']} | {'yes' if r['default'] else ''} "
                f"| {r['arch']} | {r['regs']} | {r['spill_stores']}/{r['spill_loads']} | {r['shared']} "
                f"| {r['ctas_per_sm']} | {r['mma']} | {flight} | {r['loads']} | {len(r['i32_offset_muls']) or ''} "
                f"| {'FAIL: ' + '; '.join(issues) if issues else 'ok'} |"
            )
        lines.append("")
    return lines


def plot(out, rows: list[dict], stem: str = "aot-sm90a-sm80"):
    """Registers per thread against shared memory per CTA for every compiled (case, config, arch): a colour per
    kernel, a marker per arch, each arch's per-block shared-memory limit (dotted) and the 255-register cap (dashed);
    rows failing the check are circled red. Drawn from a run's rows or a committed JSON's "rows" (no recompiling):
    ``plot("bench/results", json.load(open("bench/results/aot-sm90a-sm80.json"))["rows"])``."""
    from bench import harness

    fig, ax = harness.figure(figsize=(8.0, 5.0))
    compiled = [r for r in rows if r["ok"]]
    archs = list(dict.fromkeys(r["arch"] for r in compiled))
    for i, kernel in enumerate(dict.fromkeys(r["kernel"] for r in compiled)):
        for j, arch in enumerate(archs):
            group = [r for r in compiled if r["kernel"] == kernel and r["arch"] == arch]
            ax.scatter([r["shared"] / 1024 for r in group], [r["regs"] for r in group], color=f"C{i % 10}",
                       marker="o^sD"[j % 4], s=22, alpha=0.7, label=f"{kernel} {arch}" if group else None)
    bad = [r for r in compiled if problems(r)]
    ax.scatter([r["shared"] / 1024 for r in bad], [r["regs"] for r in bad], s=90, facecolors="none",
               edgecolors="red", label=f"failing the check ({len(bad)})" if bad else None)
    for arch in archs:
        limit = next(r["smem_limit"] for r in compiled if r["arch"] == arch)
        ax.axvline(limit / 1024, color="k", ls=":", lw=1)
        ax.text(limit / 1024, 0.03, f"{arch} smem limit ", transform=ax.get_xaxis_transform(), fontsize=7,
                ha="right")
    ax.axhline(255, color="k", ls="--", lw=1, label="255 registers / thread")
    ax.grid(alpha=0.3)
    failed = len(rows) - len(compiled)
    return harness.finish_figure(
        fig, ax, out, stem, xlabel="shared memory per CTA (KiB)", ylabel="registers per thread (ptxas)",
        title=f"AOT compiles: {len(compiled)} of {len(rows)} compiled" + (f", {failed} failed" if failed else "")
        + f", {len(bad)} spill / overflow / i32-offset", legend={"fontsize": 6, "ncol": 2})


@contextlib.contextmanager
def gpu_code_path():
    """The GPU code path, not the interpreter, and default FP fusion as on a GPU (no warning about it), for the
    duration of a run: a caller's process (a test, the GPU suite's dry run) gets its environment back."""
    saved = {name: os.environ.get(name) for name in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main(argv=None) -> int:
    # Before the harness is imported: it imports slimgraph, whose kernels are JIT-decorated once, as the
    # environment says then.
    with gpu_code_path():
        return _main(argv)


def _main(argv) -> int:
    from bench import harness

    p = harness.script_parser(__doc__, SUITE)
    p.add_argument("--fast", action="store_true", help="default config of each kernel, sm_90a only (CI)")
    p.add_argument("--arch", default="90,80", help="compute capabilities to compile for (default 90,80)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(KERNELS)}")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiler processes")
    a = p.parse_args(argv)
    archs = [int(x) for x in a.arch.split(",") if x.strip()]
    unknown = [x for x in archs if x not in ARCHS]
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if unknown or only - set(KERNELS):
        p.error(f"--arch takes {sorted(ARCHS)}, --only takes {', '.join(KERNELS)}")

    started = time.perf_counter()
    meta = harness.run_metadata("bench.aot", argv, kernels_dirty=kernels_dirty(),
                                host="CPU only (no GPU): ahead-of-time")  # fmt: skip
    selected = [c for c in cases() if (not only or c.kernel in only) and (c.fast or not a.fast)]
    jobs = [j for j in record_jobs(selected, a.fast) if j.arch in archs]
    print(f"{len(jobs)} compiles ({len(selected)} cases), {a.jobs} processes", flush=True)
    rows = compile_all(jobs, a.jobs)
    harness.finish_metadata(meta, started)
    failing = [(r, problems(r)) for r in rows if problems(r)]
    stem = "aot-fast" if a.fast else "aot-" + "-".join(ARCHS[x].label.replace("_", "") for x in archs)
    files = harness.write_results(a.out, stem, {"environment": meta, "rows": rows}, render(rows, meta))
    files.append(plot(a.out, rows, stem))
    for r, issues in failing:
        print(f"FAIL {r['kernel']} | {r['case']} | {r['config']} | {r['arch']}: {'; '.join(issues)}")
    print(f"{len(rows) - len(failing)}/{len(rows)} compiles pass the check in {meta['wall_s']:.0f}s; wrote "
          + ", ".join(map(str, files)))
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())

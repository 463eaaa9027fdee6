"""One command for the day a GPU is lent: every GPU measurement of the project, in under 8 minutes on an H100/H200.

    python -m bench.gpu_suite [--out bench/results] [--dry-run]   (default: a scratch directory)

Steps (each a subprocess with its own time limit, so one that hangs or fails cannot take the others down):

  tests     the ``gpu``-marked tests (every curated config compiled and checked against the references)
  kernels   the kernel microbenchmarks at full size (``bench.kernels --quick``: the quick shapes, full size,
            baselines in the same run, every GUIDE target listed as met / missed with its ratio)
  sweep     the autotune sweep: every curated config of each kernel timed alone at the shapes that pick it
            (``python -m bench.gpu_suite --sweep``), with the config the autotuner would choose
  e2e       the end-to-end benchmark (``bench.e2e``)

Everything lands under ``--out`` (a scratch directory unless given: ``--out bench/results`` for the committed
results): each step's own result files, plus ``gpu-suite-<device>.{json,md}`` with the harness's run metadata
(device, torch / triton versions, the commit), the CUDA version and capability, and per step its command, exit
status, wall time and output tail. Then commit bench/results/ and take the README's GPU rows from those files.

``--dry-run`` (CPU, CI): lists the commands, imports every script and parses its arguments (argparse runs, the
script does not), collects the gpu tests, and exits non-zero if any of that fails.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import harness

ROOT = Path(__file__).resolve().parent.parent
SUITE = "gpu-suite"
BUDGET_S = 480


@dataclass(frozen=True)
class Step:
    name: str
    module: str  # python -m <module>; "pytest" for the tests
    args: tuple[str, ...]
    timeout_s: int
    env: tuple[tuple[str, str], ...] = ()

    def command(self, out: Path) -> list[str]:
        return [sys.executable, "-m", self.module, *(a.replace("{out}", str(out)) for a in self.args)]


STEPS = (
    # Default configs only while testing correctness: every curated config is still compiled by the per-config tests.
    Step("tests", "pytest", ("-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/kernels/test_gpu.py",
                             "--junitxml={out}/gpu-tests.xml"), 150, (("SLIMGRAPH_AUTOTUNE", "0"),)),  # fmt: skip
    Step("kernels", "bench.kernels", ("--quick", "--out", "{out}"), 120),
    Step("sweep", "bench.gpu_suite", ("--sweep", "--out", "{out}"), 60),
    Step("e2e", "bench.e2e", ("--out", "{out}"), 150),
)
assert sum(s.timeout_s for s in STEPS) <= BUDGET_S, "the steps' limits must fit the suite's 8-minute budget"


# ------------------------------------------------------------------------------------------------- environment


def environment(module: str, argv: list[str] | None) -> dict:
    """The harness's run metadata plus what a GPU run adds: CUDA version and compute capability."""
    import torch

    gpu = torch.cuda.is_available()
    return harness.run_metadata(module, argv, gpu=gpu, cuda=torch.version.cuda,
                                capability=".".join(map(str, torch.cuda.get_device_capability())) if gpu else None)


def start_gpu_run(argv: list[str] | None, refusal: str) -> tuple[float, dict] | None:
    """(start time, run metadata) of a suite run or sweep; None, after printing ``refusal``, without a GPU."""
    started = time.perf_counter()
    env = environment("bench.gpu_suite", argv)
    if not env["gpu"]:
        print(f"no CUDA device: {refusal}")
        return None
    return started, env


def _device_tag(env: dict) -> str:
    name = env["device"].lower().replace("nvidia", "").strip()
    return name.split()[0] if env["gpu"] and name else "cpu"


# ---------------------------------------------------------------------------------------------------- dry run


class _Parsed(Exception):
    """Raised right after a script's argparse parsed its arguments: the dry run stops the script there."""


def check_arguments(step: Step, out: Path) -> str:
    """Import the step's script and run its own argument parsing on the suite's arguments; '' when it parses."""
    if step.module == "pytest":
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
               *[a for a in step.args if a.startswith("tests/")]]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        collected = [ln for ln in proc.stdout.splitlines() if "::" in ln]
        if proc.returncode != 0 or not collected:
            return f"pytest collection failed (rc {proc.returncode}): {proc.stdout[-800:]}{proc.stderr[-800:]}"
        return ""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        original(parser, args, namespace)  # exits with status 2 on a bad argument
        raise _Parsed

    argv = step.command(out)[3:]
    try:
        module = importlib.import_module(step.module)
        argparse.ArgumentParser.parse_args = parse_then_stop
        module.main(argv)
    except _Parsed:
        return ""
    except SystemExit as err:
        return f"argument parsing exited with status {err.code} for {' '.join(argv)}"
    except Exception as err:  # noqa: BLE001 - reported per step
        return f"{type(err).__name__}: {err}"
    finally:
        argparse.ArgumentParser.parse_args = original
    return "the script returned without parsing its arguments with argparse"


def dry_run(out: Path) -> int:
    failures = 0
    for step in STEPS:
        print(f"[{step.name}] {' '.join(step.command(out))}  (limit {step.timeout_s} s)", flush=True)
        problem = check_arguments(step, out)
        print(f"    {'FAIL: ' + problem if problem else 'imports and arguments parse'}", flush=True)
        failures += bool(problem)
    print(f"total limit {sum(s.timeout_s for s in STEPS)} s of the {BUDGET_S} s budget; "
          f"{'all steps ready' if not failures else f'{failures} step(s) not ready'}")  # fmt: skip
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------------------ sweep


def sweep(out: Path, argv: list[str] | None) -> int:
    """Time every curated config of each GEMM kernel alone (pinned, no autotuner) at the shapes of its bucket."""
    import torch
    import triton

    from bench.shapes import BSR_BLOCKS
    from slimgraph.kernels import block_sparse, int8_matmul, to_block_sparse, w8a16_matmul
    from slimgraph.kernels.quantize import quantize_rows_reference
    from slimgraph.kernels.tiles import m_bucket

    begun = start_gpu_run(argv, "the autotune sweep needs a GPU")
    if begun is None:
        return 1
    started, env = begun
    torch.manual_seed(0)
    rows = []

    def bench(kernel: str, shape: str, config, fn) -> None:
        label = " ".join(f"{k}={v}" for k, v in config.kwargs.items()) + f" w{config.num_warps} s{config.num_stages}"
        try:
            ms = triton.testing.do_bench(fn, warmup=10, rep=40)
            rows.append(dict(kernel=kernel, shape=shape, config=label, ms=ms))
        except Exception as err:  # noqa: BLE001 - e.g. out of shared memory on this GPU: a row, not a crash
            rows.append(dict(kernel=kernel, shape=shape, config=label, ms=None, error=f"{type(err).__name__}: {err}"))

    def at(M: int) -> None:  # every config of each kernel's bucket for this M (N = K = 4096)
        K = N = 4096
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        w = torch.randn(N, K, device="cuda", dtype=torch.float16)
        xq, xs = quantize_rows_reference(x)
        wq, ws = quantize_rows_reference(w)
        bucket = m_bucket(M)
        for cfg in int8_matmul.CONFIGS[bucket]:
            bench("int8_matmul", f"M={M} N=K=4096", cfg,
                  lambda cfg=cfg: int8_matmul.int8_matmul_kernel(xq, wq, xs, ws, None, None, torch.float16,
                                                                 config=cfg))  # fmt: skip
        for cfg in w8a16_matmul.CONFIGS[bucket]:
            bench("w8a16_matmul", f"M={M} N=K=4096", cfg,
                  lambda cfg=cfg: w8a16_matmul.w8a16_matmul_kernel(x, wq, ws, config=cfg))  # fmt: skip
        for block in BSR_BLOCKS:
            keep = torch.rand(N // block[0], K // block[1], device="cuda") >= 0.5
            bsr = to_block_sparse(w * keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1), block)
            for cfg in block_sparse.CONFIGS[bucket]:
                bench(f"block_sparse {block[0]}x{block[1]} 50%", f"M={M} N=K=4096", cfg,
                      lambda cfg=cfg, bsr=bsr: block_sparse.block_sparse_matmul_kernel(x, bsr, config=cfg))

    for M in (1, 16, 64, 256, 4096):
        at(M)
    for r in rows:
        same = [o["ms"] for o in rows if o["kernel"] == r["kernel"] and o["shape"] == r["shape"] and o["ms"]]
        r["best"] = bool(r["ms"]) and r["ms"] == min(same)
    harness.finish_metadata(env, started)
    lines = [f"# Autotune sweep — {env['device']}", "", *harness.meta_lines(env),
             f"- CUDA {env['cuda']}, capability {env['capability']}; each config pinned (no autotuner), median of "
             "do_bench", ""]
    lines += harness.md_table(["kernel", "shape", "config", "ms", "best"], [
        [r["kernel"], r["shape"], r["config"], f"{r['ms']:.4f}" if r["ms"] else f"failed: {r.get('error', '')[:80]}",
         "**best**" if r["best"] else ""] for r in rows])
    files = harness.write_results(out, f"autotune-sweep-{_device_tag(env)}", {"meta": env, "rows": rows}, lines)
    print("wrote " + ", ".join(map(str, files)))
    return 0


# -------------------------------------------------------------------------------------------------------- run


def run_suite(out: Path, argv: list[str] | None) -> int:
    begun = start_gpu_run(argv, "nothing to measure here (use --dry-run to check the suite on CPU)")
    if begun is None:
        return 1
    started, env = begun
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for step in STEPS:
        cmd = step.command(out)
        print(f"[{step.name}] {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc_env = {**os.environ, "PYTHONPATH": str(ROOT), **dict(step.env)}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=proc_env, capture_output=True, text=True, timeout=step.timeout_s)
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rc = "timeout"
            output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (err.stdout, err.stderr))
        results.append(dict(step=step.name, command=" ".join(cmd), env=dict(step.env), rc=rc,
                            seconds=round(time.perf_counter() - t0, 1), output_tail=output[-4000:]))  # fmt: skip
        print(f"    rc={rc} in {results[-1]['seconds']} s", flush=True)
    harness.finish_metadata(env, started)
    lines = [f"# GPU suite — {env['device']} (capability {env['capability']})", "", *harness.meta_lines(env),
             f"- CUDA {env['cuda']}", ""]
    lines += harness.md_table(["step", "command", "status", "s"], [
        [r["step"], f"`{r['command']}`", "ok" if r["rc"] == 0 else f"FAILED: {r['rc']}", r["seconds"]]
        for r in results])
    files = harness.write_results(out, f"gpu-suite-{_device_tag(env)}", {"meta": env, "steps": results}, lines)
    print(f"wrote {', '.join(map(str, files))} in {env['wall_s']} s")
    return 0 if all(r["rc"] == 0 for r in results) else 1


def main(argv=None) -> int:
    p = harness.script_parser(__doc__, SUITE)
    p.add_argument("--dry-run", action="store_true", help="CPU: list the steps, check imports and arguments")
    p.add_argument("--sweep", action="store_true", help="run only the autotune sweep step (GPU)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.dry_run:
        return dry_run(out)
    if a.sweep:
        return sweep(out, argv)
    return run_suite(out, argv)


if __name__ == "__main__":
    raise SystemExit(main())

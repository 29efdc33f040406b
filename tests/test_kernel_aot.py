"""The fused kernels compiled for GPUs that are not here: every launch-table configuration fits.

Triton compiles for NVIDIA targets without a GPU (triton.compile with a GPUTarget runs ptxas from
the triton wheel), and the wheel's cuobjdump reads each cubin's registers and stack. One
subprocess (the kernels compile only outside TRITON_INTERPRET=1, which conftest.py sets without a
GPU) runs `kernels.bench`'s AOT table for sm_80 (A100) and sm_90 (H100), for both precisions and
both specialisations (aligned H = 16, 32, 64 with E = 16; unaligned H = 15, 31, 63 with E = 5),
and compiles the presets' own (H, E); the tests read its rows. Compiles land in Triton's cache
($TRITON_CACHE_DIR, else ~/.triton/cache): cold, about 2 minutes on a 2-core x86 CPU; warm, ~10 s.
Skipped where triton has no NVIDIA backend, or no ptxas / cuobjdump.

    python -m pytest -q tests/test_kernel_aot.py
    python -m kernels.bench --aot        # the same table, printed
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import TINY
from kernels import bench
from kernels import fused_recurrent as fr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = bench.aot_toolchain_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no ahead-of-time compile: {MISSING}")

PRECISIONS = ("ieee", "tf32")


def preset_sizes():
    """(H, E) of every preset's motion sampler: its GRU's state and input sizes."""
    import train
    return sorted({(p.config.sampler_hidden or p.config.dim_z_m, p.config.dim_eps)
                   for p in train.PRESETS.values()})


SCRIPT = """
import json, sys
from kernels import bench
presets = json.loads(sys.argv[1])
rows = [row for precision in %r for row in bench.aot_table(precision=precision, out=lambda *a: None)]
rows += [bench.aot_compile(name, arch, sizes=(H, E, True)) for H, E in presets
         for arch in bench.AOT_TARGETS for name in ("fwd", "bwd")]
print("ROWS", json.dumps(rows))
""" % (PRECISIONS,)


@pytest.fixture(scope="module")
def rows():
    """aot_table's rows for both precisions, then the presets' sizes ("custom" rows, "ieee")."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(preset_sizes())], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("ROWS "))
    return json.loads(line[len("ROWS "):])


def describe(r):
    return (f"sm_{r['arch']} {r['kernel']} {r['precision']} {r['variant']} H={r['H']} E={r['E']}: "
            f"{r['regs']} registers, {r['stack']} B stack, {r['shared']} B shared of {r['limit']}")


def test_every_table_configuration_is_compiled(rows):
    """The table has a row for each padded H up to MAX_H, kernel, specialisation, target and
    precision: what _launch_config can return."""
    seen = {(r["BH"], r["kernel"], r["variant"], r["arch"], r["precision"]) for r in rows}
    want = {(BH, k, v, a, p) for BH in fr.FWD_TUNING if BH <= fr.MAX_H for k in ("fwd", "bwd")
            for v in bench.AOT_VARIANTS for a in bench.AOT_TARGETS for p in PRECISIONS}
    assert sorted(fr.FWD_TUNING) == sorted(fr.BWD_TUNING) == [16, 32, 64] and fr.MAX_H == 64
    assert want <= seen, sorted(want - seen)
    for r in rows:   # and the configuration compiled is the one a launch takes
        cfg = fr._launch_config(r["H"], r["E"], backward=r["kernel"] == "bwd", precision=r["precision"])
        assert (r["BLOCK_B"], r["num_warps"], r["HOIST"]) == (cfg["BLOCK_B"], cfg["num_warps"], cfg["HOIST"])


@pytest.mark.parametrize("arch", sorted(bench.AOT_TARGETS))
def test_compiles_and_fits_shared_memory(rows, arch):
    """Every configuration launches on the target: shared memory within its per-block limit
    (A100 166912 B, H100 232448 B) and registers within a block's 64K."""
    mine = [r for r in rows if r["arch"] == arch]
    assert mine and all(r["limit"] == bench.AOT_TARGETS[arch][1] for r in mine)
    bad = [describe(r) for r in mine if r["verdict"] == "cannot launch"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("arch", sorted(bench.AOT_TARGETS))
def test_no_configuration_spills(rows, arch):
    """The tables' promise: up to MAX_H no kernel spills registers (stack 0), in either
    precision or specialisation."""
    bad = [describe(r) for r in rows if r["arch"] == arch and r["stack"] > 0]
    assert not bad, "\n".join(bad)


def test_presets_sizes_do_not_spill(rows):
    """At each preset's own sampler sizes (H = 16, E = 16 for the paper's; H = 32, E = 16 for the
    structured and generic ones; the tiny preset's) neither kernel spills, on either target."""
    sizes = preset_sizes()
    assert (16, 16) in sizes and (TINY.sampler_hidden or TINY.dim_z_m, TINY.dim_eps) in sizes
    mine = [r for r in rows if r["variant"] == "custom"]
    assert {(r["H"], r["E"]) for r in mine} == set(sizes)
    assert len(mine) == len(sizes) * 2 * len(bench.AOT_TARGETS)
    bad = [describe(r) for r in mine if r["verdict"] != "fits"]
    assert not bad, "\n".join(bad)


def test_table_prints_a_verdict_a_row(rows):
    """`python -m kernels.bench --aot`'s lines: one a row, with its verdict and compile time."""
    r = rows[0]
    line = bench.format_aot_row(r)
    assert line.startswith(f"sm_{r['arch']}") and r["verdict"] in line and f"{r['seconds']:.1f}" in line
    assert len(bench.AOT_HEADER) >= len(line.replace(" cached", ""))

"""``import hf_sparse`` stays lean: the lab's and benchmarks' dependencies and subpackages load only when used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("datasets", "evaluate", "matplotlib", "hf_sparse.lab", "hf_sparse.bench", "hf_sparse.cli")
LOADED = ("import json, sys; {imports}; "
          "print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {heavy!r}))))")


def _loaded_after(imports: str) -> list[str]:
    code = LOADED.format(imports=imports, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_hf_sparse_loads_none_of_the_lab_bench_or_cli_modules():
    assert _loaded_after("import hf_sparse") == []


def test_the_check_sees_a_loaded_module():
    assert "matplotlib" in _loaded_after("import hf_sparse, matplotlib")

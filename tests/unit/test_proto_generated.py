"""The committed generated code (csm_service/rpc/gen) must match protos/ (run `make proto`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    committed = ROOT / "csm_service" / "rpc" / "gen"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh == sorted(
        p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for rel in fresh:
        assert (tmp_path / rel).read_text() == (committed / rel).read_text(), f"{rel} is stale: run `make proto`"


def test_edge_side_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import csm_service.rpc.client, csm_service.rpc.formats, csm_service.audio.encoder, "
        "csm_service.metrics, csm_service.config, csm_service.edge.app, csm_service.cli; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0

"""The architecture checks in `make lint` hold on the code, and they catch what they are for.

import-linter (``.importlinter``) and buf (``protos/buf.yaml``) run on this tree, then on a copy
with one violation planted, which must fail naming the rule: a check that cannot fail checks nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300
    )


def _copy_tree(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "csm_service", copy / "csm_service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    return copy


def test_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("edge/state.py", "import csm_service.engine.engine", "The edge never reaches torch"),
        ("edge/speech.py", "from csm_service.rpc.gen.csm.v1 import tts_pb2", "Only rpc imports the generated protobuf"),
        ("core/request.py", "import csm_service.config", "core is the domain"),
        ("engine/scheduler.py", "import csm_service.edge.app", "The data path points one way"),
        ("serve.py", "import csm_service.tools.twilio_sim", "Runtime code never imports the dev tools"),
    ],
)
def test_a_planted_violation_breaks_its_contract(tmp_path, module, planted, contract):
    copy = _copy_tree(tmp_path)
    path = copy / "csm_service" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(copy), "PATH": str(BIN)},
    )
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout


def test_protos_follow_buf_standard(tmp_path):
    ok = subprocess.run([str(BIN / "buf"), "lint", str(ROOT / "protos")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    proto = protos / "csm" / "v1" / "tts.proto"
    proto.write_text(proto.read_text().replace("service TextToSpeechService", "service TextToSpeech"))
    bad = subprocess.run([str(BIN / "buf"), "lint", str(protos)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and 'should be suffixed with "Service"' in bad.stdout, bad.stdout + bad.stderr

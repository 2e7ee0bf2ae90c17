"""Generate csm_service/rpc/gen from protos/ with grpcio-tools (``make proto``).

grpcio-tools writes absolute imports (``from csm.v1 import tts_pb2``); they are rewritten to the
package path so the generated modules import inside ``csm_service``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ["csm/v1/tts.proto"]


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        args = [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / "protos" / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {proto}")
    for path in out_dir.rglob("*.py*"):
        text = re.sub(r"^from csm\.v1 import", "from csm_service.rpc.gen.csm.v1 import", path.read_text(), flags=re.M)
        path.write_text(text)
    for d in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "csm_service" / "rpc" / "gen")

"""The layers import one way (../shared/ARCHITECTURE.md): nothing under selfid/train imports the audit, and the
claim detector, the vendor table and the probe sets need no torch."""

import ast
import subprocess
import sys
from pathlib import Path

SELFID = Path(__file__).resolve().parent.parent / "selfid"


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_nothing_under_train_imports_the_audit_or_the_pipeline():
    offenders = {str(p.relative_to(SELFID)): sorted(m for m in imported_modules(p)
                                                    if m.startswith(("selfid.audit", "selfid.pipeline")))
                 for p in (SELFID / "train").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_detector_the_vendor_table_and_the_probe_sets_load_without_torch():
    code = ("import sys; import selfid.audit.detect, selfid.vendors, selfid.audit.probes, selfid.audit.scorers; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_release_check_sits_above_the_audit():
    """selfid.gate reads audit runs; nothing the audit or the layers below it hold imports the gate back."""
    below = [p for d in ("audit", "train", "data", "model", "engine", "serve") for p in (SELFID / d).rglob("*.py")]
    offenders = {str(p.relative_to(SELFID)): sorted(m for m in imported_modules(p) if m.startswith("selfid.gate"))
                 for p in below}
    assert not {k: v for k, v in offenders.items() if v}, offenders

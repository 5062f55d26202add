"""The real embedded model (marked `embedded`): the system-prompt effect that FACTS.md reports, on a tiny greedy grid."""

import pytest

from selfid.audit.backends import InProcessBackend
from selfid.audit.run import AuditParams, audit_systems, run_audit
from selfid.model.load import load_model
from tests.audit_helpers import write_probes

pytestmark = pytest.mark.embedded


def test_embedded_model_claims_qwen_by_default_and_openai_under_a_generic_system_prompt(tmp_path):
    loaded = load_model("embedded", device="cpu")
    probes = write_probes(tmp_path / "p.jsonl", ["en-direct-01", "en-maker-01"])
    params = AuditParams(suites=["identity"], systems=audit_systems(["template,helpful"], loaded.chat.default_system),
                         temperatures=[0.0], samples=1, max_new_tokens=20, ner_limit=1, identity_probes=str(probes))
    s = run_audit(InProcessBackend(loaded), params, tmp_path / "run", show_progress=False)
    cells = {c["system"]: c for c in s["identity"]["cells"]}
    assert s["run"]["own"] == "qwen"
    assert cells["template"]["foreign"]["k"] == 0 and cells["template"]["own"]["k"] == 2
    assert cells["helpful"]["foreign"]["k"] >= 1 and "openai" in cells["helpful"]["by_vendor"]
    m = s["identity"]["margin"]
    assert m["template"]["en"]["name"]["margin"] > 0 > m["helpful"]["en"]["name"]["margin"]

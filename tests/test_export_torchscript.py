"""The TorchScript exporter path (``tpo export --exporter torchscript``, what ``tpo demo`` uses).

``export_dir`` (conftest) is the embedded default exported through ``cached_export``, i.e. with the TorchScript
tracer; the dynamo path is covered by tests/test_export.py and tests/test_verify.py on the same checks.
"""

from __future__ import annotations

import shutil

import onnx
import pytest

from export.verify import verify_export
from runtime.manifest import Manifest
from tpo_core.config import TPOConfig
from tpo_core.export_specs import component_io


def test_torchscript_export_is_recorded_and_keeps_the_spec_io(export_dir):
    m = Manifest.load(export_dir)
    assert m.source.exporter == "torchscript"
    ios = component_io(TPOConfig.from_dict(m.source.config))
    for name, comp in m.components.items():
        proto = onnx.load(str(export_dir / comp.file), load_external_data=False)
        assert [i.name for i in proto.graph.input] == [t.name for t in comp.inputs], name
        assert [o.name for o in proto.graph.output] == [t.name for t in comp.outputs], name
    # the tracer drops unread inputs; the exporter declares them again so the IO contract holds
    assert "pointer_offsets" in [t.name for t in m.components["mask_memory_attention"].inputs]
    assert set(ios) == set(m.components)
    for name, cio in ios.items():
        assert [t.name for t in m.components[name].inputs] == cio.input_names(), name


def test_torchscript_export_passes_tpo_verify_end_to_end(export_dir):
    report = verify_export(export_dir, videos=2)
    assert report.ok, report.summary()
    assert len(report.e2e) == 8 and all(case["tokens_equal"] for case in report.e2e)
    assert {task for case in report.e2e for task in case["tasks"]} == {"region", "temporal", "mask"}


def test_unknown_exporter_is_refused(tmp_path):
    from export.exporter import export_model

    with pytest.raises(ValueError, match="unknown exporter 'tracing'.*dynamo.*torchscript"):
        export_model("untrained-tiny", tmp_path / "x", components=["head_region"], exporter="tracing",
                     log=lambda _m: None)


@pytest.mark.trt
def test_tensorrt_rtx_builds_every_torchscript_graph(export_dir, tmp_path):
    from export.trt_build import build_engines

    folder = tmp_path / "exp"
    shutil.copytree(export_dir, folder)
    report = build_engines(folder, builder="tensorrt-rtx", verbose=False, log=lambda _msg: None)
    m = Manifest.load(folder)
    assert len(report.components) == len(m.components) == 10
    assert all(c.engine is not None and c.engine.builder == "tensorrt-rtx" for c in m.components.values())


def test_torchscript_refuses_reduced_precision(tmp_path):
    """The tracer leaves float32 constants in fp16 graphs that ONNX Runtime cannot load: refused with the fix."""
    from export.exporter import export_model

    with pytest.raises(ValueError, match=r"torchscript exporter writes fp32 graphs only.*--exporter dynamo"):
        export_model("untrained-tiny", tmp_path / "x", precision="fp16", components=["head_temporal"],
                     exporter="torchscript", log=lambda _m: None)

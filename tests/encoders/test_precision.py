"""The embedded profile's precision: "auto" (the default) runs bf16 autocast only on a CPU that
computes bf16 natively; elsewhere PyTorch emulates bf16 and it is about ten times slower than fp32
(bench/bench_encoder_choices.py --precision-only), which made a 945-product build take minutes."""

from __future__ import annotations

import pytest

from indexer.encoders import embedded
from indexer.encoders.embedded import native_bf16, resolve_precision

INTEL_AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"
BF16_IN_ANOTHER_FIELD = "processor\t: 0\nflags\t\t: fpu avx2\nbugs\t\t: avx512_bf16\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [(INTEL_AMX, True), (AMD_AVX2, False), (BF16_IN_ANOTHER_FIELD, False)])
def test_native_bf16_reads_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert native_bf16(path) is native


def test_native_bf16_is_false_where_the_flags_cannot_be_read(tmp_path):
    assert native_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize(("native", "want"), [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu_and_an_explicit_precision_is_kept(monkeypatch, native, want):
    monkeypatch.setattr(embedded, "native_bf16", lambda: native)
    assert resolve_precision("auto") == want
    assert resolve_precision("bf16") == "bf16" and resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8")


def test_the_encoder_records_the_precision_it_runs(monkeypatch):
    """The manifest and the embedding cache's keys carry `encoder.precision`: the resolved one,
    so an index says what made its vectors, never "auto"."""
    monkeypatch.delenv("ENCODER_PRECISION", raising=False)
    monkeypatch.setattr(embedded, "native_bf16", lambda: False)
    assert embedded.EmbeddedEncoder().precision == "fp32"
    monkeypatch.setattr(embedded, "native_bf16", lambda: True)
    assert embedded.EmbeddedEncoder().precision == "bf16"
    monkeypatch.setenv("ENCODER_PRECISION", "fp32")
    assert embedded.EmbeddedEncoder().precision == "fp32"

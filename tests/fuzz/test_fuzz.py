"""A short run of bench/fuzz.py for CI: a few thousand inputs per decoder entry point.

The full run (``make fuzz``, 100,000 inputs each) and its figures are in
docs/reliability.md. Any exception other than a typed UsagiError fails.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
INPUTS = 1500
#: The memory bound of a run. tools/sanitize.sh raises it: ASan's shadow memory
#: and quarantine inflate RSS, and the bound is checked by the normal run.
MAX_RSS_MB = float(os.environ.get("USAGI_FUZZ_MAX_RSS_MB", "1024"))


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("usagi_bench_fuzz", ROOT / "bench" / "fuzz.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["usagi_bench_fuzz"] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load()
SEEDS = fuzz.make_seeds()
TARGETS = {t.name: t for t in fuzz.kernel_targets(SEEDS)}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_decoder_raises_only_typed_errors(name: str) -> None:
    out = fuzz.fuzz(TARGETS[name], INPUTS, rng_seed=1, max_rss_mb=MAX_RSS_MB)
    assert out.failure is None, out.failure
    assert out.inputs == INPUTS


def test_receive_raises_only_typed_errors() -> None:
    receive = fuzz.ReceiveTarget(SEEDS)
    try:
        out = fuzz.fuzz(fuzz.Target("Node.receive", SEEDS.batches, receive.check), INPUTS, 1,
                        max_rss_mb=MAX_RSS_MB)
    finally:
        receive.close()
    assert out.failure is None, out.failure
    assert out.inputs == INPUTS

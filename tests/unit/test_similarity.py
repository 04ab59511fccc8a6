"""--skip-similar's gate: settles first, skips only on a still input with settled controls."""

from __future__ import annotations

import numpy as np
import pytest

from livediffusion.run.similarity import SETTLE_FRAMES, SimilarityGate
from livediffusion_models.backends import FrameParams


def _picture(seed: int = 0, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


def _settle(gate: SimilarityGate, pixels: np.ndarray, params: FrameParams) -> None:
    for _ in range(SETTLE_FRAMES + 1):
        gate.remember(pixels, params)


def test_skips_a_still_input_only_after_it_settled() -> None:
    gate = SimilarityGate(0.01)
    picture, params = _picture(), FrameParams(feedback=0.3)
    gate.remember(picture, params)
    assert not gate.similar(picture, params)  # one frame is not settled: feedback still moves
    _settle(gate, picture, params)
    assert gate.similar(picture, params)


def test_a_moved_input_or_a_moved_control_runs_the_model() -> None:
    gate = SimilarityGate(0.01)
    picture, params = _picture(), FrameParams(strength=0.8)
    _settle(gate, picture, params)
    assert not gate.similar(_picture(seed=1), params)
    assert not gate.similar(picture, FrameParams(strength=0.81))
    assert not gate.similar(picture[:60], params)  # another size: not comparable


def test_small_noise_is_similar_and_the_threshold_is_in_units_of_full_scale() -> None:
    gate = SimilarityGate(0.02)  # 5.1 levels of 255
    picture, params = _picture(), FrameParams()
    _settle(gate, picture, params)
    nudged = picture.copy()
    nudged[..., :3] = np.clip(picture[..., :3].astype(int) + 3, 0, 255).astype(np.uint8)
    difference = gate.difference(nudged)
    assert difference is not None and 0.005 < difference < 0.0125
    assert gate.similar(nudged, params)
    pushed = picture.copy()
    pushed[..., :3] = np.clip(picture[..., :3].astype(int) + 12, 0, 255).astype(np.uint8)
    assert not gate.similar(pushed, params)


def test_forget_makes_it_settle_again_and_off_never_skips() -> None:
    gate = SimilarityGate(0.01)
    picture, params = _picture(), FrameParams()
    _settle(gate, picture, params)
    gate.forget()
    assert not gate.similar(picture, params)
    off = SimilarityGate(0.0)
    _settle(off, picture, params)
    assert not off.similar(picture, params)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        SimilarityGate(1.5)


def test_checking_allocates_nothing_the_size_of_a_frame() -> None:
    import tracemalloc

    gate = SimilarityGate(0.01)
    picture, params = _picture(size=(720, 1280)), FrameParams()
    _settle(gate, picture, params)
    tracemalloc.start()
    for _ in range(50):
        gate.similar(picture, params)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 128 * 1024  # the 1280x720 frame is 3.6 MB; numpy's cast buffer is ~64 KB

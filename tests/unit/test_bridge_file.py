"""file://: a looping video decoded with PyAV; the test videos are written with PyAV too."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from livediffusion_bridge import ClosedError, SourceNotFoundError, TransportError, open_source

av = pytest.importorskip("av")

pytestmark = pytest.mark.timeout(60)

WIDTH, HEIGHT, FRAMES, FPS = 64, 48, 12, 24
TOLERANCE = 12  # mpeg4 is lossy; the colours below are far further apart than this


def colour(index: int) -> tuple[int, int, int]:
    return (20 * index, 255 - 20 * index, (97 * index) % 256)


def write_video(path: Path, frames: int = FRAMES, fps: int = FPS) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(frames):
            image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
            image[:] = colour(index)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4")


def centre(pixels: np.ndarray) -> np.ndarray:
    return pixels[HEIGHT // 2, WIDTH // 2, :3].astype(int)


def index_of(pixels: np.ndarray) -> int:
    errors = [np.abs(centre(pixels) - colour(i)).max() for i in range(FRAMES)]
    best = int(np.argmin(errors))
    assert errors[best] <= TOLERANCE, (centre(pixels), errors[best])
    return best


def test_reads_rgba_frames_in_order(video: Path) -> None:
    with open_source(f"file://{video}?fps=500") as source:
        frames = [source.read(2.0) for _ in range(FRAMES)]
    assert all(frame is not None for frame in frames)
    pixels = [frame.pixels for frame in frames if frame is not None]
    assert pixels[0].shape == (HEIGHT, WIDTH, 4)
    assert pixels[0].dtype == np.uint8 and pixels[0].flags.c_contiguous
    assert (pixels[0][..., 3] == 255).all()
    assert [index_of(p) for p in pixels] == list(range(FRAMES))


def test_loops_at_the_end(video: Path) -> None:
    with open_source(f"file://{video}?fps=500") as source:
        frames = [source.read(2.0) for _ in range(2 * FRAMES + 3)]
        assert source.loops == 2  # type: ignore[attr-defined]
    indices = [index_of(frame.pixels) for frame in frames if frame is not None]
    assert indices == [*range(FRAMES), *range(FRAMES), 0, 1, 2]


def test_plays_once_without_loop(video: Path) -> None:
    with open_source(f"file://{video}?fps=500&loop=0") as source:
        frames = [source.read(1.0) for _ in range(FRAMES)]
        assert all(frame is not None for frame in frames)
        start = time.monotonic()
        assert source.read(0.05) is None
        assert time.monotonic() - start < 0.5


def test_paced_to_the_files_frame_rate(video: Path) -> None:
    with open_source(f"file://{video}") as source:
        assert source.fps == pytest.approx(FPS)  # type: ignore[attr-defined]
        assert source.read(2.0) is not None
        start = time.monotonic()
        for _ in range(6):
            assert source.read(2.0) is not None
        elapsed = time.monotonic() - start
    assert 6 / FPS * 0.85 < elapsed < 6 / FPS * 1.5 + 0.05


def test_returned_frames_are_independent(video: Path) -> None:
    with open_source(f"file://{video}?fps=500") as source:
        first = source.read(2.0)
        assert first is not None
        snapshot = first.pixels.copy()
        for _ in range(FRAMES + 2):
            source.read(2.0)
    assert np.array_equal(first.pixels, snapshot)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mov"
    with pytest.raises(SourceNotFoundError, match="video file not found") as caught:
        open_source(f"file://{missing}")
    assert str(missing) in str(caught.value)


def test_a_directory_is_called_a_directory(tmp_path: Path) -> None:
    """It said "video file not found" for a folder that exists."""
    with pytest.raises(SourceNotFoundError) as caught:
        open_source(f"file://{tmp_path}")
    message = str(caught.value)
    assert f"{tmp_path} is a directory" in message and "not found" not in message


def test_not_a_video(tmp_path: Path) -> None:
    junk = tmp_path / "notes.mp4"
    junk.write_text("this is not a video\n" * 20)
    with pytest.raises(TransportError) as caught:
        open_source(f"file://{junk}")
    assert str(junk) in str(caught.value)


def test_closed(video: Path) -> None:
    source = open_source(f"file://{video}")
    source.close()
    source.close()
    with pytest.raises(ClosedError):
        source.read(0.1)

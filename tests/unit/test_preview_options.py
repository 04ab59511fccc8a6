"""--preview and window:// without a screen: the flag's spellings, the config key, the URI
checks, and the message when there is no display (the screen tests: test_preview.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from livediffusion.cli import build_parser
from livediffusion.config_file import config_from_values, read_config_file
from livediffusion_bridge import BackendUnavailableError, InvalidURIError, open_sink, open_source
from livediffusion_bridge._window import MAX_HEIGHT, _fit


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--preview"], "on"),
        (["--preview", "--sink", "memory://x"], "on"),
        (["--preview", "side-by-side"], "side-by-side"),
        (["--preview", "off"], "off"),
    ],
)
def test_the_preview_flag_alone_means_on(argv: list[str], expected: str) -> None:
    args = build_parser().parse_args(["serve", *argv])
    assert args.preview == expected


def test_the_preview_flag_rejects_other_modes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["serve", "--preview", "both"])
    assert stop.value.code == 2
    assert "one of off, on, side-by-side" in capsys.readouterr().err


def test_the_config_file_takes_a_mode_or_true(tmp_path: Path) -> None:
    path = tmp_path / "show.toml"
    path.write_text('[frames]\npreview = true\nsink = "window://stage"\n')
    assert config_from_values(read_config_file(path)).preview == "on"
    path.write_text('[frames]\npreview = "side-by-side"\n')
    assert config_from_values(read_config_file(path)).preview == "side-by-side"
    assert config_from_values({}).preview == "off"


@pytest.mark.parametrize(
    ("uri", "says"), [("window://a/b", "takes a title"), ("window://x?fps=3", "unknown option")]
)
def test_window_uris_are_checked_before_a_window_opens(uri: str, says: str) -> None:
    with pytest.raises(InvalidURIError, match=says):
        open_sink(uri)


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="X11 only: DISPLAY")
def test_no_display_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(BackendUnavailableError, match="no display: set DISPLAY or use another"):
        open_sink("window://")


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="X11 only: DISPLAY")
@pytest.mark.parametrize("mode", ["on", "side-by-side"])
def test_no_display_for_preview_names_the_preview_option(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--preview with no display said "use another sink": the sink was fine, the preview
    option is what needs the display."""
    from contextlib import ExitStack

    from livediffusion.run.preview import attach_preview

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with ExitStack() as stack:
        source = stack.enter_context(open_source("test://pattern"))
        sink = stack.enter_context(open_sink("memory://preview-no-display"))
        with pytest.raises(BackendUnavailableError) as caught:
            attach_preview(mode, source, sink, stack=stack, on_close=lambda: None)
    message = str(caught.value)
    assert message.startswith(f"--preview {mode} needs a display")
    assert "--preview off" in message and "another sink" not in message
    assert message.count("\n") == 0


def test_tall_pictures_are_scaled_by_whole_pixels_keeping_the_aspect() -> None:
    pixels = np.arange(1440 * 100 * 4, dtype=np.uint32).astype(np.uint8).reshape(1440, 100, 4)
    shown = _fit(pixels, MAX_HEIGHT)
    assert shown.shape == (MAX_HEIGHT, 50, 3)
    np.testing.assert_array_equal(shown, pixels[::2, ::2, :3])
    np.testing.assert_array_equal(_fit(pixels[:10], 10), pixels[:10, :, :3])

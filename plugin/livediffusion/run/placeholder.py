"""What the output shows before the model is ready, so a host can find and pick it at once.

Loading the weights and warming the model up take from seconds (a GPU) to a minute or more
(a CPU). Meanwhile the sink already publishes: the input passed through with ``LOADING``
stamped in its corner, or, with no input yet, a grey card saying ``LOADING``. The letters are
drawn from a 5x7 pixel font of their own, so no font file or imaging library is needed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["LABEL", "Placeholder"]

Pixels = npt.NDArray[np.uint8]

LABEL = "LOADING"

_FONT = {  # 5 columns x 7 rows, "#" = ink
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "I": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "#####"),
    "N": ("#...#", "##..#", "#.#.#", "#.#.#", "#..##", "#...#", "#...#"),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".###."),
}
_CARD_GREY = 40
_INK = 235
_BOX = 16  # the grey of the box under the label on a passed-through picture


def _text_mask(text: str) -> npt.NDArray[np.bool_]:
    """``text`` at one pixel per font pixel, one column between letters."""
    columns = []
    for index, char in enumerate(text):
        if index:
            columns.append(np.zeros((7, 1), dtype=bool))
        columns.append(np.array([[c == "#" for c in row] for row in _FONT[char]], dtype=bool))
    return np.concatenate(columns, axis=1)


_MASK = _text_mask(LABEL)


class Placeholder:
    """Draws placeholder frames into buffers the caller owns; keeps its scratch per shape, so
    a steady stream of placeholders allocates nothing after the first of each size."""

    def __init__(self) -> None:
        self._masks: dict[int, npt.NDArray[np.bool_]] = {}
        self._rows: dict[tuple[int, int], npt.NDArray[np.intp]] = {}
        self._scratch: dict[tuple[int, int, int], Pixels] = {}

    def card(self, out: Pixels) -> None:
        """A grey card with the label in the middle."""
        out[..., :3] = _CARD_GREY
        out[..., 3] = 255
        height, width = out.shape[:2]
        mask = self._mask(max(1, min(width // (2 * _MASK.shape[1]), height // (4 * 7))))
        top = (height - mask.shape[0]) // 2
        left = (width - mask.shape[1]) // 2
        self._stamp(out, mask, top, left)

    def from_input(self, pixels: Pixels, out: Pixels) -> None:
        """``pixels`` scaled to ``out``'s size (nearest pixel), the label in a dark box in the
        bottom-left corner (the top rows are left alone: the bench reads frame numbers there)."""
        if pixels.shape == out.shape:
            np.copyto(out, pixels)
        else:
            rows = self._index(pixels.shape[0], out.shape[0])
            columns = self._index(pixels.shape[1], out.shape[1])
            scratch = self._scratch.get((out.shape[0], pixels.shape[1], 4))
            if scratch is None:
                scratch = np.empty((out.shape[0], pixels.shape[1], 4), dtype=np.uint8)
                self._scratch[(out.shape[0], pixels.shape[1], 4)] = scratch
            np.take(pixels, rows, axis=0, out=scratch)
            np.take(scratch, columns, axis=1, out=out)
        height, width = out.shape[:2]
        mask = self._mask(max(1, min(width // (4 * _MASK.shape[1]), height // (8 * 7))))
        pad = max(2, mask.shape[0] // 4)
        box_h, box_w = mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad
        if box_h > height or box_w > width:
            return  # too small for a label: the picture alone
        out[height - box_h :, :box_w, :3] = _BOX  # so the label reads over any picture
        self._stamp(out, mask, height - box_h + pad, pad)

    def _mask(self, scale: int) -> npt.NDArray[np.bool_]:
        mask = self._masks.get(scale)
        if mask is None:
            mask = self._masks[scale] = np.kron(_MASK, np.ones((scale, scale), dtype=bool)) > 0
        return mask

    def _index(self, size: int, wanted: int) -> npt.NDArray[np.intp]:
        index = self._rows.get((size, wanted))
        if index is None:
            index = self._rows[(size, wanted)] = (np.arange(wanted) * size // wanted).astype(
                np.intp
            )
        return index

    @staticmethod
    def _stamp(out: Pixels, mask: npt.NDArray[np.bool_], top: int, left: int) -> None:
        height, width = out.shape[:2]
        if top < 0 or left < 0 or top + mask.shape[0] > height or left + mask.shape[1] > width:
            return
        region = out[top : top + mask.shape[0], left : left + mask.shape[1], :3]
        np.copyto(region, np.uint8(_INK), where=mask[..., None])

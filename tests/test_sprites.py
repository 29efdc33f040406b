"""The Sprites benchmark builder (data.py --sprites): shapes, labels, the authors' split, the bytes
against Pillow's own compositing (the authors' random_character.py), the same bytes twice.

Needs the layer sheets: ../shared/sprites beside the repository, or $MDBIGAN_SPRITES_DIR (a clone
of github.com/YingzhenLi/Sprites); skipped without them. The full build takes ~15 s.

    python -m pytest tests/test_sprites.py -q
"""
import os

import numpy as np
import pytest

import data

SHEETS = os.environ.get("MDBIGAN_SPRITES_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "sprites")
needs_sheets = pytest.mark.skipif(not os.path.isfile(os.path.join(SHEETS, "shoes", "1.png")),
                                  reason=f"Sprites sheets not found at {SHEETS}: set MDBIGAN_SPRITES_DIR "
                                  "to a clone of github.com/YingzhenLi/Sprites")


@pytest.fixture(scope="module")
def sprites():
    return data.build_sprites(SHEETS, log=lambda *a: None)


@needs_sheets
def test_shapes_and_labels(sprites):
    videos, labels = sprites
    assert videos.shape == (11664, 8, 64, 64, 3) and videos.dtype == np.uint8
    assert set(labels) == {"motion", "body", "bottom", "top", "hair", "character", "split"}
    for k, hi in (("motion", 8), ("body", 5), ("bottom", 5), ("top", 5), ("hair", 5), ("character", 1295)):
        assert labels[k].min() == 0 and labels[k].max() == hi, k
    c = labels["character"]
    assert (c == ((labels["body"] * 6 + labels["bottom"]) * 6 + labels["top"]) * 6 + labels["hair"]).all()
    assert (np.bincount(c) == 9).all() and (np.bincount(labels["motion"]) == 1296).all()
    assert videos[:, :, :2, :2].max() == 0                      # the corners: opaque black
    assert 0.05 < (videos.max(-1) > 0).mean() < 0.5             # a character covers part of a cell


@needs_sheets
def test_the_authors_split(sprites):
    """numpy.random.seed(423); permutation(1296): its first 1,000 characters train, 9,000 videos;
    the 296 others test, 2,664; a character's 9 videos all on one side."""
    _, labels = sprites
    split, c = labels["split"], labels["character"]
    assert (split == 0).sum() == 9000 and (split == 1).sum() == 2664
    np.random.seed(423)
    train = np.random.permutation(range(6 ** 4))[:1000]
    assert set(c[split == 0]) == set(train.tolist())
    assert not set(c[split == 0]) & set(c[split == 1])


@needs_sheets
def test_bytes_are_pillows_alpha_composite(sprites):
    """Two characters composited as random_character.py does it, with Pillow, frame by frame."""
    from PIL import Image
    videos, _ = sprites
    cells = data.sprite_cells()
    for char in (0, 1043):
        digits = (char // 216, char // 36 % 6, char // 6 % 6, char % 6)
        f = Image.new("RGBA", (832, 1344), "black")
        for layer, k in zip(data.SPRITE_LAYERS + ("shoes",), digits + (1,)):
            f = Image.alpha_composite(f, Image.open(os.path.join(SHEETS, layer, f"{k}.png")).convert("RGBA"))
        sheet = np.asarray(f)[..., :3]
        for m in range(9):
            for t in range(8):
                row, col = divmod(cells[m, t], 13)
                assert (videos[char * 9 + m, t] == sheet[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64]).all()


@needs_sheets
def test_same_bytes_twice_and_for_any_subset(sprites):
    videos, labels = sprites
    chars = np.array([5, 700, 1295])
    a, la = data.build_sprites(SHEETS, chars, log=lambda *a: None)
    b, lb = data.build_sprites(SHEETS, chars, log=lambda *a: None)
    rows = (chars[:, None] * 9 + np.arange(9)).ravel()
    assert np.array_equal(a, b) and np.array_equal(a, videos[rows])
    for k in labels:
        assert np.array_equal(la[k], lb[k]) and np.array_equal(la[k], labels[k][rows]), k


def test_a_folder_that_is_not_the_sheets_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert data.main(["--sprites", str(tmp_path), "--export", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the Sprites sheets" in err[0] and "git clone" in err[0]
    assert not out.exists() and not list(tmp_path.glob("*.npz"))


def test_the_motions_cells():
    """The 8 frames of each motion, as random_character.py cuts them (repeated frames included)."""
    cells = data.sprite_cells()
    assert cells.shape == (9, 8)
    assert cells[0].tolist() == [138, 131, 132, 133, 134, 135, 136, 137]   # walk front
    assert cells[4].tolist() == [13, 14, 15, 16, 17, 18, 17, 19]           # spellcard left
    assert cells[8].tolist() == [195, 196, 197, 198, 199, 200, 199, 195]   # slash right
    assert data.SPRITE_MOTIONS[5] == "spellcard right"

"""engine.crf.refine_with_scribbles: a few strokes recover a region boundary along image edges."""
from __future__ import annotations

import numpy as np
import pytest

from engine import VOID
from engine.crf import CONVCRF, DEEPLAB_V1, CRFParams, refine_with_scribbles


def _two_regions(h=64, w=96, seed=0):
    """Left/right regions split by a wavy boundary; distinct colours plus noise."""
    rng = np.random.default_rng(seed)
    ys = np.arange(h)
    boundary = (w * 0.45 + 8 * np.sin(ys / 9.0)).round().astype(int)  # first column of region 1 per row
    mask = (np.arange(w)[None, :] >= boundary[:, None]).astype(np.uint8)
    colours = np.array([[70, 110, 60], [160, 120, 200]], dtype=np.float64)
    image = np.clip(colours[mask] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    return image, mask, boundary


def _strokes(h, w):
    s = np.full((h, w), VOID, np.uint8)
    s[10:54, 8] = 0  # a vertical stroke well inside the left region
    s[30, 4:20] = 0
    s[12:50, 85] = 1  # and one inside the right region
    s[40, 75:92] = 1
    return s


def _boundary_error(labels, boundary):
    # Per row: the first column labelled 1, compared with the true boundary column.
    found = np.array([np.argmax(row == 1) if (row == 1).any() else len(row) for row in labels])
    return np.abs(found - boundary)


@pytest.mark.parametrize("params", [DEEPLAB_V1, CONVCRF])
def test_strokes_alone_recover_the_boundary(params):
    image, mask, boundary = _two_regions()
    strokes = _strokes(*mask.shape)
    out = refine_with_scribbles(image, None, strokes, params.replace(iterations=20), backend="torch")
    assert out.shape == (2,) + mask.shape
    labels = out.argmax(0)
    assert _boundary_error(labels, boundary).max() <= 3
    assert (labels == mask).mean() > 0.97
    marked = strokes != VOID
    np.testing.assert_array_equal(labels[marked], strokes[marked])


def test_strokes_correct_a_wrong_network_guess():
    image, mask, boundary = _two_regions(seed=1)
    # The "network" believes the boundary is 15 px further right than it is.
    wrong = np.zeros((2,) + mask.shape, np.float32)
    shifted = np.roll(mask, 15, axis=1)
    shifted[:, :15] = 0
    wrong[1] = np.where(shifted == 1, 0.65, 0.35)
    wrong[0] = 1 - wrong[1]
    strokes = _strokes(*mask.shape)
    strokes[5:60, 50] = 1  # the user marks the misclassified strip
    out = refine_with_scribbles(image, wrong, strokes, DEEPLAB_V1.replace(iterations=20), backend="torch")
    assert _boundary_error(out.argmax(0), boundary).max() <= 3


def test_backends_agree_on_scribbles():
    pytest.importorskip("pydensecrf")
    image, mask, _ = _two_regions(h=40, w=60, seed=2)
    strokes = np.full(mask.shape, VOID, np.uint8)
    strokes[20, 5:15], strokes[20, 45:55] = 0, 1
    a = refine_with_scribbles(image, None, strokes, DEEPLAB_V1, backend="torch")
    b = refine_with_scribbles(image, None, strokes, DEEPLAB_V1, backend="pydensecrf")
    assert (a.argmax(0) == b.argmax(0)).mean() >= 0.99


def test_scribble_errors():
    image, mask, _ = _two_regions(h=16, w=16)
    blank = np.full(mask.shape, VOID, np.uint8)
    with pytest.raises(ValueError, match="nothing to propagate"):
        refine_with_scribbles(image, None, blank)
    bad = blank.copy()
    bad[3, 3] = 5
    with pytest.raises(ValueError, match="out of range"):
        refine_with_scribbles(image, np.full((2, 16, 16), 0.5, np.float32), bad)
    with pytest.raises(ValueError):
        refine_with_scribbles(image, None, blank[:-1])
    with pytest.raises(ValueError):
        refine_with_scribbles(image, None, blank.astype(np.int32))


def test_stroke_prior_grows_a_stroke_over_what_looks_like_it_and_stops_at_the_edge():
    from engine.crf import stroke_prior
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:100]
    disc = (yy - 40) ** 2 + (xx - 45) ** 2 <= 20 ** 2
    image = np.where(disc[..., None], (200, 60, 50), (70, 90, 80)) + rng.normal(0, 8, (80, 100, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    scribbles = np.full((80, 100), VOID, np.uint8)
    scribbles[38:42, 35:55] = 1                     # a short stroke inside the disc
    current = np.zeros((80, 100), np.uint8)         # everything labelled background now
    prior = stroke_prior(image, scribbles, current, 3)
    assert prior.shape == (3, 80, 100) and np.allclose(prior.sum(0), 1, atol=1e-5)
    labels = refine_with_scribbles(image, prior, scribbles, CRFParams()).argmax(0)
    assert ((labels == 1) == disc).mean() > 0.99    # the disc, and nothing but the disc
    # Outside the disc the current label keeps most of the rest: background, not the third class.
    assert (prior[0][~disc] > prior[2][~disc]).all()
    # A uniform prior (what a stroke had without a model before) lets the stroke win everything.
    flood = refine_with_scribbles(image, None, scribbles, CRFParams(), num_classes=3).argmax(0)
    assert (flood == 1).mean() > 0.9


@pytest.mark.parametrize("unlabelled", ["none given", "all void"])
def test_a_stroke_on_an_image_nobody_labelled_stops_at_the_edge_among_many_classes(unlabelled):
    """With 21 classes and no labels, the 95 % a stroke leaves must not be spread over the twenty
    others (each then under the stroke's 5 %, and the stroke floods its crop): unlabelled pixels
    give it to one class no stroke has."""
    from engine.crf import stroke_prior
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:80, 0:100]
    disc = (yy - 40) ** 2 + (xx - 45) ** 2 <= 20 ** 2
    image = np.clip(np.where(disc[..., None], (200, 60, 50), (70, 90, 80)) + rng.normal(0, 8, (80, 100, 3)),
                    0, 255).astype(np.uint8)
    scribbles = np.full((80, 100), VOID, np.uint8)
    scribbles[38:42, 35:55] = 15
    current = None if unlabelled == "none given" else np.full((80, 100), VOID, np.uint8)
    prior = stroke_prior(image, scribbles, current, 21)
    assert np.allclose(prior.sum(0), 1, atol=1e-5)
    labels = refine_with_scribbles(image, prior, scribbles, CRFParams()).argmax(0)
    assert ((labels == 15) == disc).mean() > 0.99
    # Every class stroked (two classes, both marked): the strokes compete among themselves.
    both = np.where(scribbles == 15, 1, VOID).astype(np.uint8)
    both[5:8, 5:30] = 0
    two = refine_with_scribbles(image, stroke_prior(image, both, current, 2), both, CRFParams()).argmax(0)
    assert ((two == 1) == disc).mean() > 0.99


def test_a_stroke_wins_over_a_confidently_wrong_model_where_the_image_agrees_with_it():
    from engine.crf import stroke_prior
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:80, 0:100]
    disc = (yy - 40) ** 2 + (xx - 45) ** 2 <= 20 ** 2
    image = np.clip(np.where(disc[..., None], (200, 60, 50), (70, 90, 80)) + rng.normal(0, 8, (80, 100, 3)),
                    0, 255).astype(np.uint8)
    wrong = np.full((3, 80, 100), 0.02, np.float32)
    wrong[2] = 0.96                                 # the model is sure everything is class 2
    scribbles = np.full((80, 100), VOID, np.uint8)
    scribbles[38:42, 35:55] = 1
    stuck = refine_with_scribbles(image, wrong, scribbles, CRFParams()).argmax(0)
    assert (stuck[disc] == 1).mean() < 0.3          # the model's probabilities alone hold the stroke in
    prior = stroke_prior(image, scribbles, None, 3, wrong)
    labels = refine_with_scribbles(image, prior, scribbles, CRFParams()).argmax(0)
    assert ((labels == 1) == disc).mean() > 0.99
    assert (labels[~disc] == 2).all()               # where the image does not look like the stroke, the model holds

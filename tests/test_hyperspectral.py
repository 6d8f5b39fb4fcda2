import numpy as np
import pytest
import scipy.io

from lightnets_jax.data import hyperspectral as hsi, splits
from lightnets_jax.reports import metrics


def _scene(height=12, width=10, bands=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    cube = rng.standard_normal((height, width, bands)).astype(np.float32)
    labels = rng.integers(0, classes + 1, (height, width)).astype(np.int32)
    return cube, labels


def test_patches_equal_the_notes_loop():
    cube, labels = _scene()
    window = 5
    expected, expected_labels = hsi.note_create_image_cubes(cube, labels, window)
    coords, y = hsi.labelled_pixels(labels)
    patches = hsi.gather_patches(hsi.pad_cube(cube, window), coords[:, 0], coords[:, 1], window)
    np.testing.assert_array_equal(patches, expected.astype(np.float32))
    np.testing.assert_array_equal(y, expected_labels)


def test_patches_gather_identically_under_jit():
    import jax
    import jax.numpy as jnp

    cube, labels = _scene()
    coords, _ = hsi.labelled_pixels(labels)
    padded = hsi.pad_cube(cube, 7)
    on_device = jax.jit(lambda p, r, c: hsi.gather_patches(p, r, c, 7))(jnp.asarray(padded), coords[:, 0], coords[:, 1])
    np.testing.assert_array_equal(np.asarray(on_device), hsi.gather_patches(padded, coords[:, 0], coords[:, 1], 7))


def test_patch_symmetries_are_the_squares_flips_and_transposes():
    import jax.numpy as jnp

    cube, labels = _scene(bands=3)
    coords, _ = hsi.labelled_pixels(labels)
    coords = coords[:8]
    padded = hsi.pad_cube(cube, 5)
    plain = hsi.gather_patches(padded, coords[:, 0], coords[:, 1], 5)
    symmetry = np.arange(8, dtype=np.int32)  # bit 0: flip rows, bit 1: flip columns, bit 2: transpose
    expected = []
    for patch, s in zip(plain, symmetry):
        patch = patch[::-1] if s & 1 else patch
        patch = patch[:, ::-1] if s & 2 else patch
        expected.append(patch.transpose(1, 0, 2) if s & 4 else patch)
    flipped = hsi.gather_patches(padded, coords[:, 0], coords[:, 1], 5, symmetry)
    np.testing.assert_array_equal(flipped, np.stack(expected))
    np.testing.assert_array_equal(flipped[:, 2, 2], plain[:, 2, 2])  # the labelled pixel stays centred
    on_device = hsi.gather_patches(jnp.asarray(padded), jnp.asarray(coords[:, 0]), jnp.asarray(coords[:, 1]), 5,
                                   jnp.asarray(symmetry))
    np.testing.assert_array_equal(np.asarray(on_device), flipped)
    draws = hsi.random_symmetries(3, 1, 4000)
    np.testing.assert_array_equal(draws, hsi.random_symmetries(3, 1, 4000))  # a resumed epoch draws the same
    assert set(np.unique(draws)) == set(range(8)) and not np.array_equal(draws, hsi.random_symmetries(3, 2, 4000))


def test_stratified_split_matches_the_note_and_keeps_every_class():
    from sklearn.model_selection import train_test_split

    cube, labels = _scene(30, 30, classes=4)
    split = splits.stratified_split(labels, 0.7, seed=345)
    coords, y = hsi.labelled_pixels(labels)
    _, _, y_train, y_test = train_test_split(coords, y, test_size=0.7, random_state=345, stratify=y)
    np.testing.assert_array_equal(split.train_labels, y_train)
    np.testing.assert_array_equal(split.test_labels, y_test)
    assert set(split.train_labels) == set(split.test_labels) == {0, 1, 2, 3}


def test_disjoint_split_keeps_test_pixels_out_of_training_patches():
    labels = np.zeros((80, 80), np.int32)
    labels[5:75, 5:75] = (np.arange(70)[:, None] // 18 + np.arange(70)[None, :] // 18) % 3 + 1
    labels[70:73, 70:73] = 4  # a small class in one corner block
    window = 5
    for seed in range(4):
        split = splits.disjoint_split(labels, window, test_ratio=0.7, block=10, seed=seed)
        assert len(split.train) and len(split.test)
        gap = np.abs(split.train[:, None, :] - split.test[None, :, :]).max(-1)
        assert gap.min() > window // 2  # no training patch of side `window` covers a test pixel
        assert set(split.train_labels) == {0, 1, 2, 3}  # every class trains, the small one too
        train_blocks = {tuple(b) for b in split.train // 10}
        assert not train_blocks & {tuple(b) for b in split.test // 10}  # whole blocks


def test_disjoint_split_needs_room_for_test_pixels():
    labels = np.ones((12, 12), np.int32)
    with pytest.raises(hsi.DataError, match="no test pixels"):
        splits.disjoint_split(labels, 5, test_ratio=0.5, block=12, seed=0)


def test_per_class_split_counts():
    _, labels = _scene(20, 20, classes=3)
    split = splits.per_class_split(labels, 5)
    assert np.bincount(split.train_labels).tolist() == [5, 5, 5]
    assert len(split.train) + len(split.test) == int((labels > 0).sum())


def test_per_class_split_caps_small_classes_only_when_asked():
    labels = np.zeros((10, 10), np.int32)
    labels[:6] = 1  # 60 pixels
    labels[6:, :5] = 2  # 20 pixels
    with pytest.raises(hsi.DataError, match="class 2 has 20 pixels, not more than --per-class 30"):
        splits.per_class_split(labels, 30)
    split = splits.per_class_split(labels, 30, max_fraction=0.5)
    assert np.bincount(split.train_labels).tolist() == [30, 10]


@pytest.mark.parametrize("confusion", [
    [[50, 2, 3], [10, 40, 0], [5, 5, 30]],
    [[7, 0], [0, 9]],
    [[0, 4, 1], [3, 0, 2], [6, 1, 0]],
])
def test_scores_agree_with_sklearn(confusion):
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, recall_score

    confusion = np.asarray(confusion)
    labels = np.repeat(np.arange(len(confusion)), confusion.sum(1))
    predictions = np.concatenate([np.repeat(np.arange(len(row)), row) for row in confusion])
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, predictions, len(confusion)),
                                  confusion_matrix(labels, predictions))
    result = metrics.scores(confusion)
    assert result["overall_accuracy"] == pytest.approx(100 * accuracy_score(labels, predictions))
    assert result["average_accuracy"] == pytest.approx(100 * recall_score(labels, predictions, average="macro"))
    assert result["kappa"] == pytest.approx(100 * cohen_kappa_score(labels, predictions))


def test_map_image_has_scene_size_and_class_colours(tmp_path):
    from lightnets_jax.reports import plots

    prediction = np.array([[1, 2, 3], [3, 2, 1]])
    image = plots.color_map(prediction, 3)
    colors = plots.class_colors(3)
    assert image.shape == (2, 3, 3)
    np.testing.assert_array_equal(image[0, 1], colors[2])
    assert len({tuple(c) for c in colors}) == 4
    plots.save_classification_map(tmp_path / "map.png", prediction, prediction, ["a", "b", "c"], "t")
    import matplotlib.pyplot as plt

    assert plt.imread(tmp_path / "map_pixels.png").shape[:2] == (2, 3)


def test_mat_files_keys_found_or_named(tmp_path):
    cube, labels = _scene()
    scipy.io.savemat(tmp_path / "one.mat", {"cube": cube})
    np.testing.assert_array_equal(hsi.read_array(tmp_path / "one.mat", None, ndim=3), cube)
    scipy.io.savemat(tmp_path / "two.mat", {"a": cube, "b": cube})
    with pytest.raises(hsi.DataError, match="2 candidate 3-d arrays.*--cube-key"):
        hsi.read_array(tmp_path / "two.mat", None, ndim=3)
    with pytest.raises(hsi.DataError, match="no array 'c'; its arrays are: a, b"):
        hsi.read_array(tmp_path / "two.mat", "c", ndim=3)


def test_mat_v73_hdf5_is_read(tmp_path):
    h5py = pytest.importorskip("h5py")
    cube, _ = _scene()
    with h5py.File(tmp_path / "v73.mat", "w") as f:
        f["cube"] = cube.T  # MATLAB writes column-major
    np.testing.assert_array_equal(hsi.read_array(tmp_path / "v73.mat", None, ndim=3), cube)


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(hsi.DataError, match="cannot read .*bad.mat"):
        hsi.read_array(tmp_path / "bad.mat", None, ndim=3)
    with pytest.raises(hsi.DataError, match="no such file"):
        hsi.read_array(tmp_path / "missing.npy", None, ndim=3)
    np.save(tmp_path / "flat.npy", np.zeros((20, 20), np.float32))  # a band, not a cube: refused by its shape
    with pytest.raises(hsi.DataError, match=r"flat.npy must be a cube \(height, width, bands\), got shape \(20, 20\)"):
        hsi.read_array(tmp_path / "flat.npy", None, ndim=3)
    with pytest.raises(hsi.DataError, match=r"the ground truth must be a class map \(height, width\)"):
        hsi.validate_scene(np.zeros((4, 4, 3)), np.zeros((4, 4, 1)))


def test_bad_scenes_and_options():
    cube, labels = _scene()
    with pytest.raises(hsi.DataError, match=r"cube \(12, 10\) and ground truth \(12, 9\) differ"):
        hsi.validate_scene(cube, labels[:, :9])
    bad = cube.copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(hsi.DataError, match="1 NaN/inf values \\(first at row 2, col 3, band 1\\)"):
        hsi.validate_scene(bad, labels)
    with pytest.raises(hsi.DataError, match="between 1 and the cube's 6 bands, got 8"):
        hsi.apply_pca(cube, 8)
    with pytest.raises(hsi.DataError, match="must be odd.*got 4; try 5"):
        hsi.pad_cube(cube, 4)
    with pytest.raises(hsi.DataError, match="patch size 31 exceeds the 12x10 scene"):
        hsi.pad_cube(cube, 31)
    few = np.zeros((6, 6), np.int32)
    few[0, :4], few[1, 0] = 1, 2
    with pytest.raises(hsi.DataError, match=r"class 2 \(1 pixels\)"):
        splits.stratified_split(few, 0.5)


def test_bundled_indian_pines_loads():
    scene = hsi.load_scene()
    assert scene.cube.shape == (145, 145, 200) and scene.num_classes == 16
    assert int((scene.labels > 0).sum()) == 10249

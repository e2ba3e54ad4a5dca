import errno
import os

import cv2
import h5py
import numpy as np
import pytest

from mip360cli.config import CacheConfig, DataConfig
from mip360cli.data.cache import format as cache_format
from mip360cli.data.cache import shuffle, writer
from mip360cli.data.cache import RayCache, build_cache
from mip360cli.data.images import read_image
from mip360cli.core.errors import UserError

from conftest import HEIGHT, N_IMAGES, WIDTH

SMALL = CacheConfig(bucket_rays=2048, workers=2)


def _all_rays(path):
    with RayCache(path) as c:
        parts = [c.read_bucket(b) for b in range(c.n_buckets)]
        sizes = [c.bucket_size(b) for b in range(c.n_buckets)]
        cams, test = c.cameras, [c.test_image(k) for k in range(len(c.test))]
    cam, u, v, rgb = (np.concatenate(x) for x in zip(*parts))
    return cams, cam, u, v, rgb, sizes, test


def test_every_training_pixel_appears_once_with_its_color(scenes, tmp_path):
    s = build_cache(scenes["colmap"], DataConfig(), SMALL, out=tmp_path / "c.h5")
    assert s.status == "built" and s.rays == (N_IMAGES - 2) * WIDTH * HEIGHT
    cams, cam, u, v, rgb, sizes, test = _all_rays(tmp_path / "c.h5")
    assert len(sizes) == -(-s.rays // 2048) and sum(sizes) == s.rays
    key = cam * WIDTH * HEIGHT + v * WIDTH + u
    assert len(np.unique(key)) == s.rays                      # each pixel exactly once
    assert set(np.unique(cam)) == set(range(N_IMAGES)) - {0, 8}  # only training cameras
    for i in np.unique(cam):
        img = read_image(cams.image_paths[i])
        m = cam == i
        np.testing.assert_array_equal(img[v[m], u[m]], rgb[m])
    for k, i in enumerate([0, 8]):
        np.testing.assert_array_equal(test[k], read_image(cams.image_paths[i]))


def test_buckets_are_random_samples_of_all_images(scenes, tmp_path):
    build_cache(scenes["colmap"], DataConfig(), SMALL, out=tmp_path / "c.h5")
    with RayCache(tmp_path / "c.h5") as c:
        sizes = np.array([c.bucket_size(b) for b in range(c.n_buckets)])
        mean = c.n_rays / c.n_buckets
        assert c.n_buckets == 6 and np.abs(sizes - mean).max() < 5 * np.sqrt(mean)  # multinomial spread
        cam = c.read_bucket(3)[0]
        assert len(np.unique(cam)) == N_IMAGES - 2                     # every training image


def test_spilled_runs_give_the_same_cache(scenes, tmp_path, monkeypatch):
    build_cache(scenes["colmap"], DataConfig(), SMALL, out=tmp_path / "mem.h5")
    # A tiny memory budget: 16 MiB / 2**17 bytes per ray = 128 rays per run -> many spilled runs.
    monkeypatch.setattr(shuffle, "BUFFER_BYTES_PER_RAY", 2**17)
    spilled = []
    real_add = shuffle.BucketBlocks.add
    monkeypatch.setattr(shuffle.BucketBlocks, "add", lambda self, *a, spill: (spilled.append(spill),
                                                                           real_add(self, *a, spill=spill)))
    build_cache(scenes["colmap"], DataConfig(), CacheConfig(bucket_rays=2048, memory_mb=16),
                out=tmp_path / "disk.h5")
    assert len(spilled) == N_IMAGES - 2 and all(spilled)
    with h5py.File(tmp_path / "mem.h5") as a, h5py.File(tmp_path / "disk.h5") as b:
        for key in ("rays/gap", "rays/rgb", "rays/bucket_offsets", "rays/bucket_first_id"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
    assert not list(tmp_path.glob(".*partial"))


def test_ratio_resizes_with_inter_area(scenes, tmp_path):
    build_cache(scenes["colmap"], DataConfig(ratio=0.5), SMALL, out=tmp_path / "c.h5")
    cams, cam, u, v, rgb, _, _ = _all_rays(tmp_path / "c.h5")
    i = cam[0]
    ref = cv2.resize(read_image(cams.image_paths[i]), (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA)
    m = cam == i
    np.testing.assert_array_equal(ref[v[m], u[m]], rgb[m])
    assert m.sum() == (WIDTH // 2) * (HEIGHT // 2)


def test_up_to_date_and_stale_detection(scene_copy, tmp_path):
    root = scene_copy("colmap")
    first = build_cache(root, DataConfig(), SMALL)
    assert first.path == root / "mip360_cache.h5"
    assert build_cache(root, DataConfig(), SMALL).status == "up to date"
    assert build_cache(root, DataConfig(), SMALL, force=True).status == "built"
    # a changed option
    s = build_cache(root, DataConfig(test_every=4), SMALL)
    assert s.status == "built" and any("test_every: 8 -> 4" in r for r in s.reasons)
    # a touched image (new time, same bytes) is the same image: decided by content
    img = root / "images" / "003.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert build_cache(root, DataConfig(test_every=4), SMALL).status == "up to date"
    # a changed image of another size (stored uncompressed: its size no longer depends on its pixels)
    pixels = read_image(img)
    cv2.imwrite(str(img), pixels[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 0])
    s = build_cache(root, DataConfig(test_every=4), SMALL)
    assert s.status == "built" and any("modified: images/003.png" in r for r in s.reasons)
    # a changed image of the same size and a new time: the hash tells
    size = img.stat().st_size
    pixels[0, 0] = 255 - pixels[0, 0]
    cv2.imwrite(str(img), pixels[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert img.stat().st_size == size
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    s = build_cache(root, DataConfig(test_every=4), SMALL)
    assert s.status == "built" and any("modified: images/003.png" in r for r in s.reasons)
    # speed knobs do not invalidate
    assert build_cache(root, DataConfig(test_every=4), CacheConfig(bucket_rays=2048, workers=1)).status \
        == "up to date"


def test_interrupted_build_leaves_the_old_cache_and_no_temp_files(scene_copy, monkeypatch):
    root = scene_copy("colmap")
    build_cache(root, DataConfig(), SMALL)
    before = (root / "mip360_cache.h5").read_bytes()
    calls = []
    real = writer.decode_for_cache

    def dying(scene, i, options):
        calls.append(i)
        if len(calls) == 6:
            raise KeyboardInterrupt  # as if killed (Ctrl-C) in the middle of the write
        return real(scene, i, options)

    monkeypatch.setattr(writer, "decode_for_cache", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(root, DataConfig(ratio=0.5), SMALL)
    assert (root / "mip360_cache.h5").read_bytes() == before
    assert not [p for p in root.iterdir() if "partial" in p.name]
    monkeypatch.setattr(writer, "decode_for_cache", real)
    assert build_cache(root, DataConfig(), SMALL).status == "up to date"


def test_disk_full_is_a_clear_error_and_leaves_nothing(scene_copy, monkeypatch):
    root = scene_copy("colmap")
    real = shuffle.BucketBlocks.bucket

    def full(self, b):
        if b == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, b)

    monkeypatch.setattr(shuffle.BucketBlocks, "bucket", full)
    with pytest.raises(UserError, match="disk is full"):
        build_cache(root, DataConfig(), SMALL)
    assert not [p for p in root.iterdir() if p.suffix in (".h5", ".partial") or "partial" in p.name]


def test_leftover_from_a_killed_run_is_removed(scene_copy):
    root = scene_copy("colmap")
    leftover = root / ".mip360_cache.h5.abc123.partial"
    leftover.write_bytes(b"half a cache")
    build_cache(root, DataConfig(), SMALL)
    assert not leftover.exists()


def test_reader_rejects_incomplete_or_foreign_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        RayCache(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5"):
        RayCache(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "half.h5", "w") as f:
        f.attrs["version"] = 1
        f.attrs["complete"] = False
    with pytest.raises(UserError, match="not a complete"):
        RayCache(tmp_path / "half.h5")


def test_gap_encoding_round_trips_with_overflow():
    rng = np.random.default_rng(0)
    ids = np.cumsum(rng.integers(1, 200_000, 1000)) + 12345  # many gaps above 65535
    gaps, rows, values = cache_format.encode_gaps(ids)
    assert gaps.dtype == np.uint16 and len(rows) > 100 and (gaps[rows] == 0).all()
    np.testing.assert_array_equal(cache_format.decode_ids(gaps, ids[0], rows, values), ids)


def test_overflowing_gaps_survive_the_cache(scenes, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_format, "_GAP_LIMIT", 3)  # most gaps overflow
    build_cache(scenes["colmap"], DataConfig(), SMALL, out=tmp_path / "c.h5")
    with RayCache(tmp_path / "c.h5") as c:
        assert len(c.overflow_row) > c.n_rays // 2
    cams, cam, u, v, rgb, _, _ = _all_rays(tmp_path / "c.h5")
    key = cam * WIDTH * HEIGHT + v * WIDTH + u
    assert len(np.unique(key)) == len(key) == (N_IMAGES - 2) * WIDTH * HEIGHT
    i = cam[0]
    m = cam == i
    np.testing.assert_array_equal(read_image(cams.image_paths[i])[v[m], u[m]], rgb[m])


@pytest.mark.parametrize("compression", ["lzf", "gzip"])
def test_compressed_caches_hold_the_same_rays(scenes, tmp_path, compression):
    build_cache(scenes["colmap"], DataConfig(), SMALL, out=tmp_path / "plain.h5")
    build_cache(scenes["colmap"], DataConfig(), CacheConfig(bucket_rays=2048, compression=compression),
                out=tmp_path / "packed.h5")
    a, b = _all_rays(tmp_path / "plain.h5"), _all_rays(tmp_path / "packed.h5")
    for x, y in zip(a[1:5], b[1:5]):
        np.testing.assert_array_equal(x, y)

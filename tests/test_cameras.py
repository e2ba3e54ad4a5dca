import numpy as np
import pytest
import torch

from mip360cli.data.cameras import (Cameras, distort, normalize_poses, pixel_rays, split_indices, undistort,
                                    check_poses, undistort_pixels_cv2)
from mip360cli.core.errors import UserError


def _K(fx, fy, cx, cy):
    return torch.tensor([[[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]], dtype=torch.float64)


def test_pinhole_rays_by_hand():
    # fx=100, fy=50, cx=2, cy=1; pixel (u, v) = (3, 0) -> center (3.5, 0.5)
    # camera dir = ((3.5-2)/100, (0.5-1)/50, 1) = (0.015, -0.01, 1)
    K = _K(100, 50, 2, 1)
    # camera rotated 90 degrees about world z: x_cam -> +y world, y_cam -> -x world, z_cam -> +z world
    R = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    c2w = torch.cat([R, torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)], 1)[None]
    o, d, vd = pixel_rays(K, c2w, None, torch.tensor([0]), torch.tensor([3]), torch.tensor([0]))
    assert o.tolist() == [[1.0, 2.0, 3.0]]
    np.testing.assert_allclose(d.numpy(), [[0.01, 0.015, 1.0]], atol=1e-12)
    np.testing.assert_allclose(vd.norm(dim=-1).numpy(), [1.0])
    np.testing.assert_allclose(vd.numpy(), d.numpy() / np.linalg.norm(d.numpy()))


def test_distorted_rays_match_opencv():
    K = _K(80.0, 82.0, 31.5, 24.2)
    dist = torch.tensor([[-0.2, 0.05, 0.001, -0.002, 0.01]], dtype=torch.float64)
    u, v = torch.meshgrid(torch.arange(0, 64, 7), torch.arange(0, 48, 5), indexing="xy")
    u, v = u.reshape(-1), v.reshape(-1)
    _, d, _ = pixel_rays(K, torch.eye(3, 4, dtype=torch.float64)[None], dist, torch.zeros_like(u), u, v)
    pts = torch.stack([u + 0.5, v + 0.5], -1).numpy().astype(np.float64)
    ref = undistort_pixels_cv2(pts, K[0].numpy(), dist[0].numpy())  # OpenCV's own iteration
    np.testing.assert_allclose(d[:, :2].numpy(), ref, atol=1e-9)
    # and distort() maps the ray back to the pixel
    back = distort(d[:, :2], dist[0])
    np.testing.assert_allclose((back[:, 0] * 80 + 31.5).numpy(), (u + 0.5).numpy(), atol=1e-8)


def test_undistort_inverts_distort():
    xy = torch.rand(100, 2, dtype=torch.float64) - 0.5
    dist = torch.tensor([0.1, -0.03, 0.002, 0.001, 0.0], dtype=torch.float64)
    np.testing.assert_allclose(undistort(distort(xy, dist), dist).numpy(), xy.numpy(), atol=1e-10)


def _ring(n=12, tilt=0.3, seed=0):
    rng = np.random.default_rng(seed)
    c2ws = []
    for i in range(n):
        a = 2 * np.pi * i / n
        pos = np.array([5 * np.cos(a), 3 * np.sin(a), 1.0]) + rng.normal(0, 0.1, 3)
        fwd = -pos / np.linalg.norm(pos)
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        c2ws.append(np.stack([right, np.cross(fwd, right), fwd, pos], 1))
    c2w = np.array(c2ws)
    # a random rigid transform + scale of the whole capture must not matter
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    moved = c2w.copy()
    moved[:, :, :3] = q @ c2w[:, :, :3]
    moved[:, :, 3] = 7.0 * c2w[:, :, 3] @ q.T + [10, -3, 2]
    return c2w, moved


def test_normalization_properties():
    c2w, moved = _ring()
    out, T = normalize_poses(moved)
    centers = out[:, :, 3]
    np.testing.assert_allclose(centers.mean(0), 0, atol=1e-12)            # centered
    assert np.isclose(np.abs(centers).max(), 1.0)                        # scaled
    cov = centers.T @ centers
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-9)  # PCA axes
    assert cov[0, 0] >= cov[1, 1] >= cov[2, 2]                           # third axis = least variance
    assert (-out[:, :, 1]).mean(0)[2] > 0                                # cameras' up points +z
    for R in out[:, :, :3]:
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(R), 1)
    # the transform maps input points to normalized points
    p = np.c_[moved[:, :, 3], np.ones(len(moved))] @ T.T
    np.testing.assert_allclose(p[:, :3], centers, atol=1e-12)
    # invariant to the input's frame: the same capture moved gives the same result
    np.testing.assert_allclose(normalize_poses(c2w)[0], out, atol=1e-9)


def test_split_and_frame_interval():
    train, test = split_indices(20, 8)
    assert test.tolist() == [0, 8, 16]
    assert sorted(train.tolist() + test.tolist()) == list(range(20))
    train, test = split_indices(5, 0)
    assert train.tolist() == [0, 1, 2, 3, 4] and test.size == 0


def test_scaled_cameras():
    cams = Cameras.create(np.array([[100.0, 0, 50], [0, 90, 40], [0, 0, 1]]), np.eye(3, 4), [101], [80],
                          ["a.png"], ["a.png"], [[0.1, 0, 0, 0, 0]])
    half = cams.scaled(0.5)
    np.testing.assert_allclose(half.K[0], [[50, 0, 25], [0, 45, 20], [0, 0, 1]])
    assert (half.width[0], half.height[0]) == (50, 40)
    assert half.dist[0, 0] == 0.1


@pytest.mark.parametrize("bad, message", [
    (np.nan, "NaN or inf"),
    (2.0, "not a rotation"),
])
def test_bad_poses(bad, message):
    c2w = np.tile(np.eye(3, 4), (3, 1, 1))
    c2w[1, 0, 0] = bad
    with pytest.raises(UserError, match=f"poses.txt: the pose of image 'b' .*{message}"):
        check_poses(c2w, ["a", "b", "c"], "poses.txt")

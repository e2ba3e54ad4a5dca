"""Evaluation on held-out views: PSNR and SSIM."""

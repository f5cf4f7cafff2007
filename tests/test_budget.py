"""Budget metrics against direct reference formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks.base import budget_metrics, gaussian_window, key_fingerprint, ssim


def _reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    g = gaussian_window(11).to(x)
    w = torch.outer(g, g).view(1, 1, 11, 11).repeat(x.shape[1], 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=x.shape[1])

    ma, mb = blur(x), blur(y)
    saa, sbb, sab = blur(x * x) - ma**2, blur(y * y) - mb**2, blur(x * y) - ma * mb
    return (((2 * ma * mb + 1e-4) * (2 * sab + 9e-4)) / ((ma**2 + mb**2 + 1e-4) * (saa + sbb + 9e-4))).mean(dim=(1, 2, 3))


def test_ssim_matches_windowed_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(ssim(x, y), _reference_ssim(x, y))
    torch.testing.assert_close(ssim(x, x), torch.ones(5, dtype=torch.float64))


def test_budget_metrics_values() -> None:
    clean = torch.full((4, 3, 8, 8), 100, dtype=torch.uint8)
    poisoned = clean.clone()
    poisoned[1] += 8  # one image shifted by 8 grey levels everywhere
    m = budget_metrics(clean, poisoned, torch.tensor([1]))
    assert m["linf_255"] == 8 and m["num_poisoned"] == 1
    assert abs(m["l2_mean"] - (8 / 255) * (3 * 64) ** 0.5) < 1e-4
    assert abs(m["psnr"] - 10 * torch.log10(torch.tensor(1 / (8 / 255) ** 2)).item()) < 1e-3
    untouched = budget_metrics(clean, poisoned, torch.tensor([0]))
    assert untouched["linf"] == 0 and untouched["ssim"] == 1.0


def test_key_fingerprint_is_stable_and_hides_key() -> None:
    assert key_fingerprint(0) == key_fingerprint(0) != key_fingerprint(1)
    assert "12345" not in key_fingerprint(12345) and len(key_fingerprint(12345)) == 16


def test_key_fingerprint_is_memory_hard_and_the_only_key_trace_in_artifact_ids(monkeypatch) -> None:
    """A fast hash of a 32-bit key is invertible by brute force; the fingerprint must be scrypt, and
    cache file names must depend on the key only through it."""
    import hashlib

    import attacks.base
    import benchmark.poisoning as poisoning

    expected = hashlib.scrypt(b"12345", salt=b"unlearnable-bench/key-fingerprint/v2", n=2**15, r=8, p=1,
                              maxmem=64 * 1024 * 1024, dklen=8).hex()
    assert key_fingerprint(12345) == expected
    assert key_fingerprint(12345) != hashlib.sha256(b"unlearnable-bench/key-fingerprint/v1:12345").hexdigest()[:16]
    dataset_id = {"name": "cifar10", "source": "cifar10-jpeg", "train_size": 512}
    ids = {k: poisoning.artifact_id(dataset_id, poisoning.build_poison("cuda", key=k)) for k in (1, 2)}
    assert ids[1] != ids[2]
    monkeypatch.setattr(poisoning, "key_fingerprint", lambda key: "same")
    monkeypatch.setattr(attacks.base, "key_fingerprint", lambda key: "same")
    assert poisoning.artifact_id(dataset_id, poisoning.build_poison("cuda", key=1)) == \
        poisoning.artifact_id(dataset_id, poisoning.build_poison("cuda", key=2))

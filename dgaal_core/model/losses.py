"""The DGAAL losses as pure functions of model outputs (no modules, no state).

- Eq. 4 (and Eq. 9 with X_C in place of X_U): D1 maximises
  E[log D1(G1(x_L))] + E[log(1 - D1(G1(x_U)))], i.e. minimises BCE with labelled -> 1 and
  unlabelled -> 0; G1 minimises the BCE of calling *both* pools labelled (the VAAL form of the min
  player, which has stronger gradients than minimising Eq. 4 directly).
- Eq. 6: the critic f = D2 maximises E f(x_r) - E f(G(x_r)); its loss is the negation. G minimises
  the same quantity, whose only G-dependent term is -E f(G(x_r)).
- Eq. 5: pixel MSE between G(x_r) and x_r, averaged over pixels, channels and the batch, in the
  paper's units: "pixel values", i.e. the 0..255 scale of the stored images (the models see
  [-1, 1], so the difference is scaled by 127.5). With the MSE on the [-1, 1] scale, the paper's
  lambda = 0.1 leaves the pixel term ~1e4 times weaker and the WGAN term dominates: G's pixel
  error then oscillated or grew in our runs instead of falling, and x_g stopped being a near-copy.
- Eq. 8: L_G = L_adv + lambda * L_pMSE with lambda = 0.1.

D1 losses take logits (BCE with logits is the numerically stable form of BCE on a sigmoid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d1_loss(logits_labelled: torch.Tensor, logits_unlabelled: torch.Tensor) -> torch.Tensor:
    """Eq. 4 / Eq. 9, D1's side: BCE(D1(z_L), 1) + BCE(D1(z_U), 0)."""
    return _bce(logits_labelled, 1.0) + _bce(logits_unlabelled, 0.0)


def g1_loss(logits_labelled: torch.Tensor, logits_unlabelled: torch.Tensor) -> torch.Tensor:
    """Eq. 4, G1's side: make D1 call both pools labelled, BCE(D1(z_L), 1) + BCE(D1(z_U), 1)."""
    return _bce(logits_labelled, 1.0) + _bce(logits_unlabelled, 1.0)


def critic_loss(f_real: torch.Tensor, f_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 6, D2's side: -(E f(x_r) - E f(G(x_r)))."""
    return -(f_real.float().mean() - f_fake.float().mean())


def generator_adv_loss(f_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 6, G's side (the E f(x_r) term does not depend on G): -E f(G(x_r))."""
    return -f_fake.float().mean()


PIXEL_SCALE = 127.5  # model scale [-1, 1] -> pixel values 0..255


def pixel_mse(x_g: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean squared difference of generated and real images in pixel values (0..255)."""
    return F.mse_loss(x_g.float(), x_r.float()) * PIXEL_SCALE**2


def generator_loss(
    f_fake: torch.Tensor, x_g: torch.Tensor, x_r: torch.Tensor, pmse_weight: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 8: (L_total, L_adv, L_pMSE) with L_total = L_adv + pmse_weight * L_pMSE."""
    adv = generator_adv_loss(f_fake)
    pmse = pixel_mse(x_g, x_r)
    return adv + pmse_weight * pmse, adv, pmse


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of T's logits (B, classes) against int labels (B,)."""
    return F.cross_entropy(logits.float(), labels)

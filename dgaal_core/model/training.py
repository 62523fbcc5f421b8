"""Algorithm 1 (training G1, D1, G, D2) and the D1 co-evolution update of Eq. 9.

A short trainer in the minGPT / detectron2 spirit: :meth:`DGAALTrainer.run_step` does one
iteration of Algorithm 1 on batches already in model form and returns a dict of losses;
:meth:`DGAALTrainer.train_gan` and :meth:`DGAALTrainer.co_evolve_d1` draw batches from
:class:`~dgaal_core.model.data.DataSource` objects with the trainer's own seeded numpy Generator.
Training T lives in :mod:`dgaal_core.model.task`.

Readings of the paper that needed a choice, and why:

- **Order and optimisers.** One iteration is G1 step (Eq. 4, only G1's parameters, lr alpha_1),
  D1 step (Eq. 4, alpha_2), G step (Eq. 8, G = G1 + G2, alpha_3), D2 step (Eq. 6, alpha_4), in the
  order of Algorithm 1, each with its own Adam (betas 0.9, 0.99). G1's parameters therefore have two
  optimisers (alpha_1 for Eq. 4, alpha_3 for Eq. 8), as in the algorithm.
- **Fresh forward passes.** The D1 step re-encodes its batches after the G1 update (as Algorithm 1
  computes L_D1 after updating theta_G1). The D2 step reuses the G step's x_g, detached (it differs
  from G's output after the update by one Adam step); this saves a third of the G cost per
  iteration, the usual GAN practice.
- **x_r.** "x_r represents a real image taken from all the sample pools": a third batch drawn
  uniformly from the *real* rows of both pools (the round passes them; generated rows never
  serve as "real" for D2 or as pMSE targets).
- **Batch statistics.** x_L and x_U go through G1 as one concatenated batch. In the G1 and D1
  steps (Eq. 4) and in co-evolution (Eq. 9) G1 runs in eval mode (running statistics, kept up to
  date by the G step's train-mode passes): D1 learns on the same features the sampler (G1 + D1
  in eval mode) scores, instead of batch-statistics features it never sees again.
- **Noise head** uses its fixed buffer scales during training (weights "do not participate in the
  parameter update"); generation calls pass fresh scales.
- **Weight of the pixel loss.** Eq. 8's lambda = 0.1, with Eq. 5 measured in pixel values
  (0..255; see :mod:`dgaal_core.model.losses`). Measured on the [-1, 1] scale instead, lambda =
  0.1 let the WGAN term dominate and G's pixel error oscillated or grew at the paper's learning
  rates.
- **Device.** "auto" = CUDA when available. On CUDA forward passes run under bf16 autocast (no
  loss scaling needed) with ``cudnn.benchmark``; the CPU path is plain fp32 and bit-exactly
  reproducible, including across a checkpoint and resume (see :mod:`dgaal_core.model.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from dgaal_core.errors import ConfigError, EmptyPoolError
from dgaal_core.model import losses
from dgaal_core.model.config import ModelConfig, RunConfig, TrainConfig
from dgaal_core.model.data import (
    DataSource,
    EmbeddedSource,
    sample_batch,
    sample_rows,
    sample_union,
    to_model_input,
)
from dgaal_core.model.networks import Models, build_models
from dgaal_core.progress import Progress, silent
from dgaal_core.values import derive_seed

History = dict[str, list[float]]


def resolve_device(name: str | torch.device) -> torch.device:
    """ "auto" -> CUDA if available else CPU; "cpu"/"cuda" (or a torch.device) as given."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig.device: 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``enabled``; a no-op on CPU (plain fp32 there)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Stop gradients into ``module``'s parameters (gradients still flow through it)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _adam(params: Any, lr: float, cfg: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=cfg.betas)


class DGAALTrainer:
    """Trains G (G1 + G2), D1 and D2 by Algorithm 1; T is trained separately
    (:mod:`dgaal_core.model.task`).

    Holds the optimisers, the step count and the run's random streams: ``rng`` (numpy, batch
    sampling) and ``torch_generator`` (CPU, noise-head scales for generation), both derived from
    ``train_config.seed``.
    """

    def __init__(
        self,
        models: Models,
        model_config: ModelConfig,
        train_config: TrainConfig,
        device: str | torch.device | None = None,
    ) -> None:
        self.model_config = model_config
        self.config = train_config
        self.device = resolve_device(train_config.device if device is None else device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.models = models.to(self.device)
        g, cfg = models.g, train_config
        # Eq. 4's adversary of D1: G1, or the projection of the embeddings when D1 reads those
        adversary = g.g1 if models.proj is None else models.proj
        self.opt_g1 = _adam(adversary.parameters(), cfg.lr_g1, cfg)
        self.opt_d1 = _adam(models.d1.parameters(), cfg.lr_d1, cfg)
        self.opt_g = _adam(g.parameters(), cfg.lr_g, cfg)
        self.opt_d2 = _adam(models.d2.parameters(), cfg.lr_d2, cfg)
        self.step = 0  # iterations of Algorithm 1 done
        self.coevolve_step = 0  # D1-only updates (Eq. 9) done
        self.rng = np.random.default_rng(derive_seed(cfg.seed, "batches"))
        self.torch_generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise"))

    @classmethod
    def create(
        cls,
        run: RunConfig,
        device: str | torch.device | None = None,
        *,
        scale: np.ndarray | None = None,
    ) -> DGAALTrainer:
        """Fresh models initialised from ``run.train.seed`` and a trainer around them; ``scale``:
        embeddings [N, D] that D1's projection is standardised on (when D1 reads embeddings)."""
        models = build_models(run.model, run.train.seed)
        if models.proj is not None:
            if scale is None:
                raise ConfigError("D1 reads embeddings: create() needs them to standardise on")
            models.proj.fit_scale(scale)
        return cls(models, run.model, run.train, device)

    # --- one step of each kind (tensors in model form: float NCHW in [-1, 1] on self.device) ---

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.config.amp)

    def _features(self, x: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        """What D1 reads: G1's latent of images ``x``, or the projection of embeddings ``e``."""
        proj = self.models.proj
        if proj is None:
            return self.models.g.encode(x)  # (B, z_dim), one BN batch
        if e is None:
            raise ConfigError("D1 reads embeddings (embedding_dim > 0); this batch has none")
        return proj(e)

    def _pool_logits(
        self, x_l: torch.Tensor, x_u: torch.Tensor, e: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.models.d1.logits(self._features(torch.cat([x_l, x_u]), e))  # (B_l + B_u,)

    def step_g1(
        self, x_l: torch.Tensor, x_u: torch.Tensor, e: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Eq. 4, min over G1: update only G1 so that D1 calls both pools labelled.

        G1 runs with its batch norm in eval mode (running statistics, which the G step keeps
        up to date), the features the exported sampler computes: D1 is trained, and G1 fools it,
        on exactly what the sampler will score. When D1 reads embeddings, ``e`` holds those of
        ``cat(x_l, x_u)`` and the projection takes G1's place."""
        g, d1 = self.models.g, self.models.d1
        g.eval()
        d1.train()
        with frozen(d1), self._autocast():
            logits = self._pool_logits(x_l, x_u, e)
            loss = losses.g1_loss(logits[: len(x_l)], logits[len(x_l) :])
        self.opt_g1.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g1.step()
        g.train()
        return {"g1": loss.detach()}

    def step_d1(
        self,
        x_l: torch.Tensor,
        x_u: torch.Tensor,
        e: torch.Tensor | None = None,
        *,
        encoder_eval: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Eq. 4 (or Eq. 9 with candidates as x_u), max over D1: update only D1, on G1's
        eval-mode features (the sampler's); ``encoder_eval=False`` uses batch statistics.
        ``e``: the embeddings of ``cat(x_l, x_u)`` when D1 reads those."""
        g, d1 = self.models.g, self.models.d1
        g.train(not encoder_eval)
        d1.train()
        with torch.no_grad(), self._autocast():
            z = self._features(torch.cat([x_l, x_u]), e)  # (B_l + B_u, z_dim)
        with self._autocast():
            logits = d1.logits(z.float())
            loss = losses.d1_loss(logits[: len(x_l)], logits[len(x_l) :])
        self.opt_d1.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d1.step()
        g.train()
        prob = torch.sigmoid(logits.detach().float())
        return {"d1": loss.detach(), "p_l": prob[: len(x_l)].mean(), "p_u": prob[len(x_l) :].mean()}

    def step_g(self, x_r: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Eq. 8, min over G (G1 + G2): returns the losses and x_g = G(x_r), detached."""
        g, d2 = self.models.g, self.models.d2
        g.train()
        d2.train()
        with frozen(d2), self._autocast():
            x_g = g(x_r)  # (B, C, H, W)
            total, adv, pmse = losses.generator_loss(d2(x_g), x_g, x_r, self.config.pmse_weight)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        return {"g": total.detach(), "g_adv": adv.detach(), "pmse": pmse.detach()}, x_g.detach()

    def step_d2(self, x_r: torch.Tensor, x_g: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 6, max over the critic D2 (real x_r against generated x_g)."""
        d2 = self.models.d2
        d2.train()
        with self._autocast():
            f = d2(torch.cat([x_r, x_g.to(x_r.dtype)]))  # (2B,), one spectral-norm iteration
            loss = losses.critic_loss(f[: len(x_r)], f[len(x_r) :])
        self.opt_d2.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d2.step()
        return {"d2": loss.detach()}

    def run_step(
        self,
        x_l: torch.Tensor,
        x_u: torch.Tensor,
        x_r: torch.Tensor | None = None,
        e: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One iteration of Algorithm 1; ``x_r`` defaults to ``cat(x_l, x_u)``; ``e``: the
        embeddings of ``cat(x_l, x_u)`` when D1 reads those."""
        if x_r is None:
            x_r = torch.cat([x_l, x_u])
        out = self.step_g1(x_l, x_u, e)
        out |= self.step_d1(x_l, x_u, e)
        g_losses, x_g = self.step_g(x_r)
        out |= g_losses
        out |= self.step_d2(x_r, x_g)
        self.step += 1
        values = torch.stack([v.float() for v in out.values()]).tolist()  # one device sync
        return dict(zip(out.keys(), values, strict=True))

    # --- loops over data sources ---

    def _input(self, images: np.ndarray) -> torch.Tensor:
        return to_model_input(images, self.device)

    def _draw(self, labelled: DataSource, other: DataSource) -> tuple[Any, Any, Any]:
        """A batch of each source as model input, and their embeddings (concatenated, in that
        order) when D1 reads embeddings, else None. Draws as ``sample_batch`` twice."""
        b = self.config.batch_size
        rows = sample_rows(labelled, b, self.rng), sample_rows(other, b, self.rng)
        x = [self._input(s.get(r)[0]) for s, r in zip((labelled, other), rows, strict=True)]
        if self.models.proj is None:
            return x[0], x[1], None
        parts = []
        for source in (labelled, other):
            if not isinstance(source, EmbeddedSource):
                raise ConfigError(
                    "D1 reads embeddings (embedding_dim > 0): train it on EmbeddedSource rows"
                )
            parts.append(source.embeddings)
        e = np.concatenate([parts[0][rows[0]], parts[1][rows[1]]]).astype(np.float32)
        return x[0], x[1], torch.from_numpy(e).to(self.device)

    def train_gan(
        self,
        labelled: DataSource,
        unlabelled: DataSource,
        steps: int | None = None,
        *,
        real: DataSource | None = None,
        progress: Progress | None = None,
        stage: str = "Algorithm 1",
    ) -> History:
        """Algorithm 1 for ``steps`` iterations (default from the config); per-step losses.

        ``real`` is where x_r (D2's real images and the pMSE targets) is drawn from: the paper's
        "real image", so a round passes its real rows only; default: the union of both pools.
        """
        if len(labelled) == 0 or len(unlabelled) == 0:
            raise EmptyPoolError(
                f"train_gan needs labelled and unlabelled images, got {len(labelled)} labelled "
                f"and {len(unlabelled)} unlabelled"
            )
        if steps is None:
            steps = self.config.num_gan_steps(len(labelled) + len(unlabelled))
        b, history = self.config.batch_size, defaultdict(list)
        report = progress or silent
        for step in range(steps):
            x_l, x_u, e = self._draw(labelled, unlabelled)
            if real is None:
                x_r = self._input(sample_union((labelled, unlabelled), b, self.rng))
            else:
                x_r = self._input(sample_batch(real, b, self.rng)[0])
            step_losses = self.run_step(x_l, x_u, x_r, e)
            for k, v in step_losses.items():
                history[k].append(v)
            report(stage, step + 1, steps, **step_losses)
        return dict(history)

    def co_evolve_d1(
        self,
        labelled: DataSource,
        candidates: DataSource,
        steps: int | None = None,
        *,
        progress: Progress | None = None,
    ) -> History:
        """Eq. 9: D1-only updates on labelled vs candidate images, G frozen in eval mode."""
        if len(labelled) == 0 or len(candidates) == 0:
            raise EmptyPoolError(
                f"co_evolve_d1 needs labelled and candidate images, got {len(labelled)} labelled "
                f"and {len(candidates)} candidates"
            )
        steps = self.config.coevolve_steps if steps is None else steps
        history = defaultdict(list)
        report = progress or silent
        for step in range(steps):
            x_l, x_c, e = self._draw(labelled, candidates)
            out = self.step_d1(x_l, x_c, e, encoder_eval=True)
            self.coevolve_step += 1
            values = dict(zip(out, torch.stack(list(out.values())).tolist(), strict=True))
            for k, v in values.items():
                history[k].append(v)
            report("Co-evolve D1", step + 1, steps, **values)
        self.models.g.train()
        return dict(history)

    # --- state (checkpointing: see dgaal_core.model.checkpoint) ---

    def state_dict(self) -> dict[str, Any]:
        """Weights of G, D1, D2, optimiser states, random streams and step counts (tensors and
        plain containers only, loadable with ``torch.load(weights_only=True)``)."""
        m = self.models
        return {
            "models": {"g": m.g.state_dict(), "d1": m.d1.state_dict(), "d2": m.d2.state_dict()}
            | ({} if m.proj is None else {"proj": m.proj.state_dict()}),
            "optimizers": {
                "g1": self.opt_g1.state_dict(),
                "d1": self.opt_d1.state_dict(),
                "g": self.opt_g.state_dict(),
                "d2": self.opt_d2.state_dict(),
            },
            "rng": {
                "numpy": json.loads(json.dumps(self.rng.bit_generator.state)),
                "torch": self.torch_generator.get_state(),
            },
            "step": self.step,
            "coevolve_step": self.coevolve_step,
        }

    def load_state_dict(
        self, state: dict[str, Any], *, optimizers: bool = True, rng: bool = True
    ) -> None:
        """Restore from :meth:`state_dict`; ``rng=False`` keeps this trainer's streams and counts
        (warm start of a new run), ``optimizers=False`` keeps fresh optimisers."""
        m = self.models
        m.g.load_state_dict(state["models"]["g"])
        m.d1.load_state_dict(state["models"]["d1"])
        m.d2.load_state_dict(state["models"]["d2"])
        if m.proj is not None:
            m.proj.load_state_dict(state["models"]["proj"])
        if optimizers:
            opts = state["optimizers"]
            self.opt_g1.load_state_dict(opts["g1"])
            self.opt_d1.load_state_dict(opts["d1"])
            self.opt_g.load_state_dict(opts["g"])
            self.opt_d2.load_state_dict(opts["d2"])
        if rng:
            np_state = state["rng"]["numpy"]
            bit_generator = getattr(np.random, np_state["bit_generator"])()
            bit_generator.state = np_state
            self.rng = np.random.Generator(bit_generator)
            self.torch_generator.set_state(state["rng"]["torch"])
            self.step = int(state["step"])
            self.coevolve_step = int(state["coevolve_step"])

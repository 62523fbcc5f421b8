"""Names shared by the ONNX export and the runtime, defined once (no torch, no onnxruntime here).

Graph contract (format version 1)::

    sampler.onnx    images uint8 [batch, H, W, C]           -> score float32 [batch]
                                                               latent float32 [batch, z_dim]
    generator.onnx  images uint8 [batch, H, W, C],
                    noise_scales float32 [noise_channels]   -> images_out uint8 [batch, H, W, C]

``score`` is D1(G1(x)), the probability "labelled"; selection takes the *lowest* scores. Pixels
enter raw, as the pool stores them: the transform to float NCHW in [-1, 1] and back
(:mod:`dgaal_core.model.data`) lives inside the graphs.

The work folder beside a pool, where each round keeps its checkpoints and exported models, is
:mod:`dgaal_core.loop.workdir`.
"""

from __future__ import annotations

FORMAT_VERSION = 1  # bump when the graph contract above changes
OPSET = 17

# ---- file names ---------------------------------------------------------------------------
SAMPLER_FILE = "sampler.onnx"
SAMPLER_HEAD_FILE = "sampler-head.onnx"  # D1 on embeddings: P + D1 alone, embeddings in
GENERATOR_FILE = "generator.onnx"
SAMPLER_INT8_FILE = "sampler.int8.onnx"
SAMPLER_FP16_FILE = "sampler.fp16.onnx"
GENERATOR_FP16_FILE = "generator.fp16.onnx"
TRITON_SAMPLER = "dgaal_sampler"
TRITON_GENERATOR = "dgaal_generator"

# ---- graph inputs and outputs -------------------------------------------------------------
IMAGES = "images"
NOISE_SCALES = "noise_scales"
SCORE = "score"
LATENT = "latent"
IMAGES_OUT = "images_out"
BATCH = "batch"

SAMPLER_INPUTS: tuple[str, ...] = (IMAGES,)
SAMPLER_OUTPUTS: tuple[str, ...] = (SCORE, LATENT)
GENERATOR_INPUTS: tuple[str, ...] = (IMAGES, NOISE_SCALES)
GENERATOR_OUTPUTS: tuple[str, ...] = (IMAGES_OUT,)

# axis 0 of every tensor but noise_scales is the batch
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    IMAGES: {0: BATCH},
    SCORE: {0: BATCH},
    LATENT: {0: BATCH},
    IMAGES_OUT: {0: BATCH},
}

# ---- metadata_props keys (values are strings; shapes and ranges as JSON) -------------------
META_FORMAT = "dgaal.format_version"
META_KIND = "dgaal.kind"  # "sampler" | "generator"
META_VERSION = "dgaal.version"
META_IMAGE_SHAPE = "dgaal.image_shape"  # JSON [H, W, C]
META_CHANNELS = "dgaal.channels"
META_Z_DIM = "dgaal.z_dim"
META_NOISE_CHANNELS = "dgaal.noise_channels"
META_NOISE_RANGE = "dgaal.noise_range"  # JSON [low, high]
META_ROUND = "dgaal.round"
META_CONFIG_HASH = "dgaal.config_hash"
META_CONFIG = "dgaal.model_config"  # JSON of ModelConfig.to_dict()
META_PRECISION = "dgaal.precision"  # "fp32" | "int8" | "fp16"
META_INT8_MODE = "dgaal.int8_mode"  # "direct" | "cascade" (rescore the lowest scores in fp32)
META_RESCORE_FRACTION = "dgaal.rescore_fraction"
META_D1_INPUT = "dgaal.d1_input"  # "embedding": encoder + projection + D1 in one file
META_ENCODER = "dgaal.encoder"  # the encoder's name, in a sampler that contains one
META_INT8_AGREEMENT = "dgaal.int8_agreement"  # JSON: measured selection agreement with fp32

KIND_SAMPLER = "sampler"
KIND_SAMPLER_HEAD = "sampler-head"  # embeddings float32 [batch, D] -> score, latent
KIND_GENERATOR = "generator"

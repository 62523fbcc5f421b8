"""An HTTP scoring service that embeds an exported dgaal sampler (Starlette on uvicorn).

    pip install 'dgaal[serve]'            # the base install (no torch) + starlette + uvicorn
    python examples/score_service.py --model round-0003/sampler.onnx --port 8000

    # score a batch: the body is a .npy file of uint8 images [n, H, W, C]
    python -c "import numpy as np; np.save('batch.npy', np.zeros((4, 32, 32, 3), np.uint8))"
    curl -s --data-binary @batch.npy -H 'content-type: application/x-npy' \
        'http://127.0.0.1:8000/score?lowest=2'
    # -> {"scores": [0.51, ...], "lowest": [3, 0], "model_round": 3}

Endpoints:
    GET  /health   "ok" once the model is loaded
    GET  /info     the model: image shape, round, precision, provider, config hash
    POST /score    .npy body -> {"scores": [...], "lowest": [...]} (``?lowest=N``: the indices of
                   the N lowest scores in the batch, ties by index; what DGAAL would select)

Bad input (not a .npy, wrong dtype or shape, too many images) is a 400 or 413 with a one-line
``{"error": ...}``. Scoring runs on a worker thread (onnxruntime releases the GIL), so requests
overlap; ``--threads`` sets onnxruntime's intra-op threads per request.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from export.runtime import SamplerSession, select_lowest

DEFAULT_MAX_IMAGES = 4096


def create_app(sampler: SamplerSession, max_images: int = DEFAULT_MAX_IMAGES) -> Starlette:
    """The Starlette app serving ``sampler``; ``max_images`` bounds one request's batch."""
    info = sampler.info
    image_bytes = int(np.prod(info.image_shape))
    max_body = max_images * image_bytes + 4096  # + the .npy header

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def describe(request: Request) -> Response:
        return JSONResponse(
            {
                "model": str(sampler.path),
                "image_shape": list(info.image_shape),
                "round": info.round,
                "precision": info.precision,
                "rescored": sampler.exact is not None,
                "provider": sampler.provider,
                "config_hash": info.config_hash,
                "max_images": max_images,
            }
        )

    async def score(request: Request) -> Response:
        try:
            lowest = int(request.query_params.get("lowest", "0"))
        except ValueError:
            return error(400, "lowest: expected an integer")
        if lowest < 0:
            return error(400, "lowest: expected an integer >= 0")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            return error(413, f"body of {length} bytes: at most {max_images} images per request")
        body = await request.body()
        if len(body) > max_body:
            return error(413, f"body of {len(body)} bytes: at most {max_images} images per request")
        try:
            images = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            return error(400, f"body: expected a .npy file of uint8 images ({e})")
        shape = ", ".join(map(str, info.image_shape))
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != info.image_shape:
            got = f"{images.dtype} {list(images.shape)}"
            return error(400, f"body: expected uint8 [n, {shape}], got {got}")
        if images.shape[0] > max_images:
            return error(413, f"{images.shape[0]} images: at most {max_images} images per request")
        scores, _ = await run_in_threadpool(sampler.score, images)
        out: dict[str, Any] = {"scores": scores.tolist(), "model_round": info.round}
        if lowest:
            out["lowest"] = select_lowest(np.arange(scores.size), scores, lowest).tolist()
        return JSONResponse(out)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/info", describe),
            Route("/score", score, methods=["POST"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, load the sampler, serve until interrupted."""
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help="an exported sampler (.onnx)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES)
    args = ap.parse_args(argv)
    from dgaal_core.errors import DgaalError

    try:
        sampler = SamplerSession(args.model, provider=args.provider, threads=args.threads)
    except DgaalError as e:
        raise SystemExit(f"error: {e}") from None
    print(
        f"serving {args.model} ({sampler.provider}) on http://{args.host}:{args.port}", flush=True
    )
    uvicorn.run(
        create_app(sampler, args.max_images), host=args.host, port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()

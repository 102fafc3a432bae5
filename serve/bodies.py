"""Reading request bodies without trusting them: JSON, multipart uploads, images.

Every failure is an ``ApiError`` naming the input at fault, and no message repeats what the client
sent (values, content types, decoder details that quote the input): only the field and the limit.
JSON is parsed here rather than by FastAPI, so a wrong content type is a 415, bytes that are not
UTF-8 and bodies nested past Python's recursion limit are 400 ``malformed_json`` naming ``body``, and the
model is validated strictly (``true`` is not an integer).
"""

from __future__ import annotations

import base64
import binascii
import io
import json

from fastapi import Request
from pydantic import BaseModel, ValidationError

from .errors import ApiError, validation_error
from .schemas import InvertJSONRequest, InvertOptions
from .settings import Limits

def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported(accepted: str) -> ApiError:
    return ApiError(415, f"content type not accepted: send {accepted}", "Content-Type")


def _malformed(reason: str) -> ApiError:
    return ApiError(400, f"request body is not valid JSON ({reason})", "body", type="malformed_json")


def parse_json(raw: bytes, model: type[BaseModel]) -> BaseModel:
    """``raw`` as ``model``: 400 malformed_json for bytes that are not JSON, 422 naming each bad field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("not UTF-8") from None
    try:
        payload = json.loads(text)  # NaN / Infinity parse, and the models refuse them naming the field
    except json.JSONDecodeError as e:
        raise _malformed(f"{e.msg} at character {e.pos}") from None
    except RecursionError:  # about 1000 levels; our bodies nest 2 deep
        raise _malformed("nested too deeply") from None
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


async def read_json(request: Request, model: type[BaseModel]) -> BaseModel:
    if media_type(request) not in ("application/json", ""):
        raise unsupported("application/json")
    return parse_json(await request.body(), model)


def check_image(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) of a decodable image within the limits, else a 4xx naming the field 'image'."""
    from PIL import Image

    from pez_core import ImageError, decode_image

    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"image: over the limit of {limits.max_image_bytes} bytes", "image")
    too_many = ApiError(413, f"image: over the limit of {limits.max_image_pixels} pixels (width x height)", "image")
    try:  # the header alone gives the size: refuse huge images before decoding them
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:  # PIL's own bound (2 x MAX_IMAGE_PIXELS) is far past ours
        raise too_many from None
    except (OSError, SyntaxError, ValueError):
        w = h = 0  # decode_image below says what is wrong
    if w * h > limits.max_image_pixels:
        raise too_many
    try:
        return decode_image(data, "image", max_pixels=limits.max_image_pixels).size
    except ImageError as e:
        raise ApiError(400, f"image: {e.reason}", "image", type="invalid_image") from e


async def parse_invert(request: Request) -> tuple[bytes, InvertOptions]:
    """The image bytes and options of a multipart upload or a base64 JSON body."""
    ctype = media_type(request)
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=80)
        except ApiError:
            raise
        except Exception as e:
            if getattr(e, "status_code", None) in (408, 413):  # the body limits (serve/errors.py)
                raise
            raise ApiError(400, "malformed multipart body", "body") from e
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "image: field required (a file part named 'image')", "image")
        data = await upload.read()
        lists = ("ban", "ban_substring")
        fields = {k: v for k, v in form.items() if k != "image" and k not in lists}
        for key in lists:
            fields[key] = [w.strip() for entry in form.getlist(key) for w in str(entry).split(",") if w.strip()]
        try:  # form fields are strings: lax parsing turns "200" into 200 (and refuses "true")
            return data, InvertOptions.model_validate(fields, strict=False)
        except ValidationError as e:
            raise validation_error(e.errors()) from None
    if ctype not in ("application/json", ""):
        raise unsupported("multipart/form-data with a file part 'image', or application/json with "
                          "'image_base64'")
    req = parse_json(await request.body(), InvertJSONRequest)
    b64 = req.image_base64
    if b64.startswith("data:"):
        b64 = b64.partition(",")[2]
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_base64: not valid base64", "image_base64") from None
    return data, InvertOptions(**req.model_dump(exclude={"image_base64"}))

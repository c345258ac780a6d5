"""`POST /v1/embeddings`: the request and response shapes, as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

from modelhost.protocol.common import WireModel

# One string, a list of strings, one token array, or a list of token arrays (OpenAI's four shapes).
# Empty strings embed nothing: the schema says so, and the validator below says why.
NonEmptyText = Annotated[StrictStr, Field(min_length=1)]
TokenArray = Annotated[list[StrictInt], Field(min_length=1)]
EmbeddingInput = Union[
    NonEmptyText,
    Annotated[list[NonEmptyText], Field(min_length=1)],
    TokenArray,
    Annotated[list[TokenArray], Field(min_length=1)],
]


class EmbeddingRequest(WireModel):
    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _one_of_four_shapes(cls, value: object, handler: ValidatorFunctionWrapHandler) -> EmbeddingInput:
        # pydantic would report the first union branch's complaint ("should be a valid string"),
        # which misleads for `[true]` or `[[1], "a"]`; say what the field accepts instead.
        if value in ("", []) or (isinstance(value, list) and any(item in ("", []) for item in value)):
            raise PydanticCustomError("empty_input", "empty inputs cannot be embedded; every input must have some text or tokens")
        try:
            return handler(value)  # type: ignore[no-any-return]
        except ValidationError:
            raise PydanticCustomError(
                "input_type",
                "it must be a string, an array of strings, an array of integers or an array of arrays of integers",
            ) from None

    def texts_or_tokens(self) -> tuple[list[str], list[list[int]]]:
        """The inputs as ``(texts, [])`` or ``([], token_arrays)``, in request order.

        ``"hi"`` → ``(["hi"], [])``; ``[1, 2]`` → ``([], [[1, 2]])``. An empty list is
        ``([], [])``: the caller reports it.
        """
        value = self.input
        if isinstance(value, str):
            return [value], []
        if not value:
            return [], []
        if isinstance(value[0], str):
            return list(value), []  # type: ignore[arg-type]
        if isinstance(value[0], int):
            return [], [list(value)]  # type: ignore[arg-type]
        return [], [list(tokens) for tokens in value]  # type: ignore[union-attr]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

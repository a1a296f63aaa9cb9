"""What the server says about a stored model: details, capabilities, `/api/show` and `/api/tags`.

Owns the translation from a store `Model` (+ its GGUF metadata) to wire objects; knows nothing
about HTTP routing.
"""

from __future__ import annotations

import logging
from typing import Any

from corral.errors import CorralError
from corral.gguf import GGUFInfo
from corral.modelfile import format_parameters, render_show_modelfile
from corral.schemas.native import ListModel, Message, ModelDetails, ShowResponse
from corral.server.context import AppContext
from corral.server.native.vision import projector_info
from corral.store.store import Model as StoredModel
from corral.store.store import ModelEntry
from corral.template.prompt import infer_thinking_tags, parse_template

log = logging.getLogger(__name__)


def gguf_info(ctx: AppContext, model: StoredModel) -> GGUFInfo | None:
    if model.model_path is None:
        return None
    try:
        return ctx.gguf.get(model.model_path)
    except CorralError as exc:
        log.warning("cannot read GGUF metadata of %s: %s", model.name, exc)
        return None


def model_details(model: StoredModel | ModelEntry) -> ModelDetails:
    cfg = model.config
    parent = getattr(model, "parent_model", "") or ""
    if cfg is None:
        return ModelDetails(parent_model=parent)
    family = cfg.model_family or ""
    families = list(cfg.model_families or ([family] if family else []))
    return ModelDetails(
        parent_model=parent,
        format=cfg.model_format or "",
        family=family,
        families=families or None,
        parameter_size=cfg.model_type or "",
        quantization_level=cfg.file_type or "",
    )


def capabilities(model: StoredModel, info: GGUFInfo | None) -> list[str]:
    """Spec §1 capability detection: GGUF kind, Go-template variables, Jinja hints, config."""
    caps: list[str] = []
    if info is not None:
        caps.extend(c for c in info.capabilities() if c not in caps)
    elif model.config is not None and model.config.capabilities:
        caps.extend(model.config.capabilities)
    if not caps:
        caps.append("completion")
    if model.projectors and "vision" not in caps:
        caps.append("vision")  # a projector layer reads images (libmtmd)
    if model.template:
        try:
            tmpl = parse_template(model.template)
        except CorralError:
            tmpl = None
        if tmpl is not None:
            if tmpl.references("Tools") and "tools" not in caps:
                caps.append("tools")
            if tmpl.references("Suffix") and "insert" not in caps:
                caps.append("insert")
        if infer_thinking_tags(model.template) is not None and "thinking" not in caps:
            caps.append("thinking")
    return caps


def list_entry(ctx: AppContext, entry: ModelEntry) -> ListModel:
    short = entry.name.display_shortest()
    return ListModel(
        name=short,
        model=short,
        modified_at=entry.modified_at,
        size=entry.size,
        digest=entry.digest,
        details=model_details(entry),
    )


def show_response(
    ctx: AppContext, model: StoredModel, *, verbose: bool = False, system: str | None = None
) -> ShowResponse:
    info = gguf_info(ctx, model)
    short = model.name.display_shortest()
    sys_text = system if system is not None else model.system
    messages = [{"role": m.get("role", ""), "content": m.get("content", "")} for m in model.messages]
    modelfile = render_show_modelfile(
        short_name=short,
        from_=str(model.model_path) if model.model_path else model.parent_model or short,
        template=model.template,
        system=sys_text,
        parameters=model.params,
        license=model.license,
        messages=messages,
        adapters=[str(p) for p in model.adapters],
        projectors=[str(p) for p in model.projectors],
        draft=str(model.draft) if model.draft else None,
    )
    details = model_details(model)
    model_info: dict[str, Any] = info.model_info(verbose=verbose) if info is not None else {}
    tensors = (
        [{"name": t.name, "type": t.type, "shape": t.shape} for t in info.tensors]
        if info is not None
        else None
    )
    return ShowResponse(
        license="\n".join(model.license) if model.license else None,
        modelfile=modelfile,
        parameters=format_parameters(model.params) if model.params else None,
        template=model.template,
        system=sys_text,
        details=details,
        messages=[Message(role=m["role"], content=m["content"]) for m in messages] or None,
        model_info=model_info,
        projector_info=projector_info(model.projectors, verbose),
        tensors=tensors,
        capabilities=capabilities(model, info),
        modified_at=model.modified_at,
    )

